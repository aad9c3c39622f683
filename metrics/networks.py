"""Feature networks behind one injection point.

Nothing here downloads: production weights come from local files, and every loader
checks for them first and raises a FileNotFoundError that says how to get them.
The ``"tiny"`` variants are small seeded networks for offline unit tests.
Heavy libraries (open_clip, lpips, cleanfid) are imported inside the loaders.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from models.base import seeded

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
CLIP_HF_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_TRANSFORMERS_REPO = "openai/clip-vit-large-patch14"  # the same weights, as torchmetrics loads them
CLIP_HF_FILE = "open_clip_pytorch_model.bin"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

TINY_SEED = 0


# ----------------------------------------------------------------------------- FID


FID_MODES = ("clean", "legacy_tensorflow")  # clean-fid's names; "legacy_pytorch" is not offered


class TinyFeatureNet(nn.Module):
    """Small conv net standing in for Inception in tests: float NCHW [0,255] -> (N, 64).

    ``resize_inside`` mirrors InceptionV3W(resize_inside=True) ("legacy_tensorflow"): any input size,
    resized in the network with TF1's bilinear (torch-fidelity's port), as the TF/ADM evaluators do.
    """

    input_size = 64

    def __init__(self, resize_inside: bool = False) -> None:
        super().__init__()
        self.resize_inside = resize_inside
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if self.resize_inside:
            from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(s, s), align_corners=False)
        assert x.shape[1:] == (3, s, s), f"expected (N,3,{s},{s}), got {tuple(x.shape)}"
        return self.body(x / 127.5 - 1.0)  # same [0,255] contract as InceptionV3W


def load_fid_network(name: str, weights_dir: str | Path | None, device: str | torch.device,
                     mode: str = "clean") -> nn.Module:
    """Feature extractor taking float NCHW in [0,255]; carries ``.network_id`` and ``.resize_id``.

    ``mode`` is clean-fid's: "clean" resizes outside with PIL bicubic to ``.input_size`` (see
    metrics/fid.py); "legacy_tensorflow" hands the network native-size images and it resizes inside
    with TF1 bilinear, so numbers are comparable with TF / ADM-evaluated FIDs.
    """
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; valid: {', '.join(FID_MODES)}")
    inside = mode == "legacy_tensorflow"
    if name == "inception":
        path = Path(weights_dir) / INCEPTION_FILE if weights_dir is not None else Path(INCEPTION_FILE)
        if weights_dir is None or not path.is_file():
            raise FileNotFoundError(
                f"Inception FID weights not found: {path}. Fetch them with "
                f"`curl -L -o {path} {INCEPTION_URL}` (clean-fid's TorchScript Inception)."
            )
        from cleanfid.inception_torchscript import InceptionV3W

        net = InceptionV3W(str(path.parent), download=False, resize_inside=inside)
        net.input_size, net.network_id = 299, "inception-2015-12-05"
    elif name == "shapes":  # the proxy benchmark's classifier (metrics/shapes_classifier.py), hash-checked
        if inside:
            raise ValueError("the shapes classifier has no TF-resize mode; use fid_mode: clean")
        from metrics.shapes_classifier import load_shapes_classifier
        from models.proxy import proxy_dir

        net = load_shapes_classifier(proxy_dir("shapes_classifier"), device)
        net.network_id = f"shapes-classifier-{net.weights_id}"
    elif name == "tiny":
        with seeded(TINY_SEED):
            net = TinyFeatureNet(resize_inside=inside)
        net.network_id = f"tiny-seed{TINY_SEED}"
    else:
        raise ValueError(f"unknown FID network {name!r}; valid: 'inception', 'shapes', 'tiny'")
    net.resize_inside = inside
    net.resize_id = "tf1-bilinear-inside" if inside else "clean-bicubic"
    return net.to(device).eval()


# ----------------------------------------------------------------------------- CLIP


@dataclass
class ClipBundle:
    model: Any  # open_clip.model.CLIP
    preprocess: Callable  # PIL.Image -> (3,S,S) float tensor
    tokenizer: Callable  # list[str] -> (N,77) long tensor
    network_id: str


def load_clip(name: str, weights: str | Path | None, device: str | torch.device) -> ClipBundle:
    if name == "ViT-L-14-quickgelu":
        # The -quickgelu config matters: plain "ViT-L-14" with OpenAI weights only warns and
        # runs GELU, giving wrong embeddings (open_clip PR #970).
        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(
                f"CLIP weights not found: {weights} (expected {CLIP_HF_FILE}). Fetch with "
                f"`huggingface-cli download {CLIP_HF_REPO} {CLIP_HF_FILE} --local-dir <dir>` or from "
                f"https://huggingface.co/{CLIP_HF_REPO}/resolve/main/{CLIP_HF_FILE}"
            )
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(weights), device=device
        )
        tokenizer = open_clip.get_tokenizer(name)
        network_id = f"open_clip-{name}-{Path(weights).name}"
    elif name == "tiny":
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
        # vocab/context must match the real BPE tokenizer, which works offline.
        text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
        with seeded(TINY_SEED):
            model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True)
        model = model.to(device)
        preprocess = open_clip.image_transform(32, is_train=False)
        tokenizer = open_clip.get_tokenizer("ViT-L-14")
        network_id = f"tiny-clip-seed{TINY_SEED}"
    else:
        raise ValueError(f"unknown CLIP network {name!r}; valid: 'ViT-L-14-quickgelu', 'tiny'")
    return ClipBundle(model.eval(), preprocess, tokenizer, network_id)


class _FeatureTensors(nn.Module):
    """A transformers CLIPModel whose get_*_features return tensors.

    torchmetrics 1.9's CLIPScore calls ``.norm`` on them, but transformers 5 returns a ModelOutput
    (its ``pooler_output`` is the projected embedding), so CLIPScore breaks on the raw model.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs):
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def _tiny_clip_tokenizer():
    """CLIP's BPE tokenizer over a byte-level vocabulary with no merges (every word -> characters)."""
    import json
    import tempfile

    import transformers
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    if int(transformers.__version__.split(".")[0]) >= 5:
        return CLIPTokenizer(vocab=vocab, merges=[])
    with tempfile.TemporaryDirectory() as d:  # transformers 4 loads the slow tokenizer from files only
        Path(d, "vocab.json").write_text(json.dumps(vocab))
        Path(d, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")))


def load_transformers_clip(name: str, folder: str | Path | None, device: str | torch.device):
    """(model, processor) for torchmetrics' CLIPScore: the ``toca_compat`` protocol (metrics/clip_score.py).

    ``ViT-L-14-quickgelu`` reads a local copy of the hub repo openai/clip-vit-large-patch14 (the
    same weights as open_clip's 'openai' ViT-L/14); ``tiny`` is a seeded 1-layer model for tests.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    if name == "ViT-L-14-quickgelu":
        if folder is None or not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(
                f"transformers CLIP weights not found: {folder} (a local copy of {CLIP_TRANSFORMERS_REPO}). "
                f"Fetch with `hf download {CLIP_TRANSFORMERS_REPO} --local-dir {folder}`")
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    elif name == "tiny":
        cfg = CLIPConfig(
            text_config=dict(vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=77, bos_token_id=512,
                             eos_token_id=513, pad_token_id=513),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                               num_attention_heads=2, image_size=32, patch_size=8),
            projection_dim=16)
        with seeded(TINY_SEED):
            model = CLIPModel(cfg)
        # The real processor's defaults (rescale 1/255, OpenAI mean/std, bicubic, center crop) at 32 px.
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=_tiny_clip_tokenizer())
    else:
        raise ValueError(f"unknown CLIP network {name!r}; valid: 'ViT-L-14-quickgelu', 'tiny'")
    return _FeatureTensors(model.eval()).to(device), processor


# ----------------------------------------------------------------------------- LPIPS


def load_lpips(name: str, device: str | torch.device) -> nn.Module:
    """LPIPS v0.1; input pairs of float NCHW in [-1, 1]."""
    import lpips

    if name == "alex":
        # lpips builds torchvision's AlexNet, which would otherwise try to download it.
        ckpt = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"LPIPS AlexNet backbone not found: {ckpt} (set $TORCH_HOME to relocate). "
                f"Fetch with `curl -L --create-dirs -o {ckpt} {ALEXNET_URL}`."
            )
        with warnings.catch_warnings():  # torchvision's `pretrained=` deprecation noise
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="alex", verbose=False)
    elif name == "shapes":  # the proxies: an LPIPS-style distance over the shapes classifier's layers
        from metrics.shapes_classifier import ShapesPerceptualDistance, load_shapes_classifier
        from models.proxy import proxy_dir

        classifier = load_shapes_classifier(proxy_dir("shapes_classifier"), device)
        net = ShapesPerceptualDistance(classifier)
        net.network_id = f"lpips-style-shapes-classifier-{classifier.weights_id}"
        return net.eval()
    elif name == "tiny":
        # Linear heads ship inside the lpips wheel; random (seeded) backbone => no download.
        with seeded(TINY_SEED), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    else:
        raise ValueError(f"unknown LPIPS network {name!r}; valid: 'alex', 'shapes', 'tiny'")
    net.network_id = f"lpips-alex-v0.1{'-tiny-seed%d' % TINY_SEED if name == 'tiny' else ''}"
    return net.to(device).eval()
