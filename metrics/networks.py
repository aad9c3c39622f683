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
CLIP_HF_FILE = "open_clip_pytorch_model.bin"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

TINY_SEED = 0


# ----------------------------------------------------------------------------- FID


class TinyFeatureNet(nn.Module):
    """Small conv net standing in for Inception in tests: float NCHW [0,255] -> (N, 64)."""

    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        assert x.shape[1:] == (3, s, s), f"expected (N,3,{s},{s}), got {tuple(x.shape)}"
        return self.body(x / 127.5 - 1.0)  # same [0,255] contract as InceptionV3W


def load_fid_network(name: str, weights_dir: str | Path | None, device: str | torch.device) -> nn.Module:
    """Feature extractor taking float NCHW in [0,255] at ``.input_size``; carries ``.network_id``."""
    if name == "inception":
        path = Path(weights_dir) / INCEPTION_FILE if weights_dir is not None else Path(INCEPTION_FILE)
        if weights_dir is None or not path.is_file():
            raise FileNotFoundError(
                f"Inception FID weights not found: {path}. Fetch them with "
                f"`curl -L -o {path} {INCEPTION_URL}` (clean-fid's TorchScript Inception)."
            )
        from cleanfid.inception_torchscript import InceptionV3W

        # resize_inside=False: we resize outside with clean-fid's PIL-bicubic ("clean" mode).
        net = InceptionV3W(str(path.parent), download=False, resize_inside=False)
        net.input_size, net.network_id = 299, "inception-2015-12-05"
    elif name == "shapes":  # the proxy benchmark's classifier (metrics/shapes_classifier.py), hash-checked
        from metrics.shapes_classifier import load_shapes_classifier
        from models.proxy import proxy_dir

        net = load_shapes_classifier(proxy_dir("shapes_classifier"), device)
        net.network_id = f"shapes-classifier-{net.weights_id}"
    elif name == "tiny":
        with seeded(TINY_SEED):
            net = TinyFeatureNet()
        net.network_id = f"tiny-seed{TINY_SEED}"
    else:
        raise ValueError(f"unknown FID network {name!r}; valid: 'inception', 'shapes', 'tiny'")
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
