"""The proxy benchmark's feature network: a small CNN trained on the procedural shapes (dsbench/shapes.py).

It plays Inception's role for proxy FID (its 16-d penultimate features) and CLIP's for proxy alignment:
the fraction of generated images whose predicted attributes are the ones the condition asked for
(colour and shape of a DiT class; colour, shape and position of a PixArt caption).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dsbench.shapes import COLORS, POSITIONS, SHAPES, from_label, parse_caption

HEADS = {"color": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS)}
FEATURES = 16  # N = 4·D at the smoke run's 64 samples: FID needs well more samples than dimensions


class ShapesClassifier(nn.Module):
    """float NCHW [0, 255] at 32 px -> (N, FEATURES) features; `classify` adds one logit head per attribute."""

    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),   # 16
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),   # 8
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),   # 4: keeps where the shape is
            # Linear features, no ReLU: a ReLU here leaves dead units, whose zero variance makes FID's
            # covariance singular.
            nn.Flatten(), nn.Linear(64 * 16, FEATURES),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURES, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if x.shape[1:] != (3, s, s):
            raise ValueError(f"expected (N, 3, {s}, {s}) images, got {tuple(x.shape)}")
        return self.body(x / 127.5 - 1.0)

    def classify(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self(x)
        return {k: head(f) for k, head in self.heads.items()}

    def split(self) -> tuple[nn.Sequential, nn.Sequential]:
        """(conv layers, up to the 4x4 map; flatten + linear, to the features): views sharing this net's
        modules, for the metrics that read its conv activations (the state dict keeps ``body``'s names)."""
        cut = next(i for i, m in enumerate(self.body) if isinstance(m, nn.Flatten))
        return self.body[:cut], self.body[cut:]


def targets(captions: Sequence[str]) -> dict[str, torch.Tensor]:
    parsed = [parse_caption(c) for c in captions]
    return {k: torch.tensor([v.index(getattr(p, k)) for p in parsed]) for k, v in HEADS.items()}


def wanted(condition) -> dict[str, str]:
    """Attributes a condition asks for: a DiT class id (colour, shape) or a caption (colour, shape, position)."""
    if isinstance(condition, str):
        p = parse_caption(condition)
        return {"color": p.color, "shape": p.shape, "position": p.position}
    color, shape = from_label(int(condition))
    return {"color": color, "shape": shape}


def load_shapes_classifier(folder: str | Path, device) -> ShapesClassifier:
    """The committed classifier, after its SHA-256 check (models/proxy.py)."""
    from safetensors.torch import load_file

    from models.proxy import verified

    folder = Path(folder)
    digest = verified(folder)["sha256"]["model.safetensors"]
    net = ShapesClassifier()
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    net.weights_id = digest[:12]  # names the weights in metric network ids, without hashing again
    return net.to(device).eval()


class Alignment:
    """Streaming proxy alignment: share of images whose every asked-for attribute is predicted."""

    def __init__(self, net: ShapesClassifier, device) -> None:
        self.net, self.device, self.hits, self.n = net, device, 0, 0
        self.per_sample: list[bool] = []  # for the bootstrap interval of the share

    @torch.no_grad()
    def update(self, images, conditions: Sequence) -> None:
        """images: uint8 (N, 32, 32, 3)."""
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float().to(self.device)
        logits = self.net.classify(x)
        pred = {k: [HEADS[k][i] for i in v.argmax(1).tolist()] for k, v in logits.items()}
        for i, c in enumerate(conditions):
            hit = all(pred[k][i] == v for k, v in wanted(c).items())
            self.hits += hit
            self.per_sample.append(hit)
        self.n += len(conditions)

    def compute(self) -> float:
        if not self.n:
            raise ValueError("no images")
        return self.hits / self.n


class ShapesPerceptualDistance(nn.Module):
    """LPIPS-style distance over the classifier's conv layers, for the proxies (LPIPS's AlexNet backbone
    cannot be fetched offline). As LPIPS: each layer's activations are unit-normalised over channels,
    squared differences summed over channels and averaged over positions; then averaged over layers,
    with no learned per-channel weights. Inputs: float NCHW in [-1, 1] (LPIPS's contract); output (N,)."""

    def __init__(self, net: ShapesClassifier) -> None:
        super().__init__()
        self._conv = net.split()[0]

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], x
        for layer in self._conv:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                feats.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        layers = [((fa - fb) ** 2).sum(1).mean((1, 2)) for fa, fb in zip(self._features(a), self._features(b))]
        return torch.stack(layers).mean(0)


class ShapesAdmExtractor(nn.Module):
    """The classifier in the ADM suite's extractor contract (metrics/adm.py), for the DiT proxy's Table-2
    columns: pool = its FEATURES-d features (Inception's pool_3), spatial = the first SPATIAL_CHANNELS
    channels of its last 4x4 conv map in NHWC order (as sFID slices mixed_6/conv), logits = the 12 classes'
    joint log-probabilities log p(colour) + log p(shape), in dsbench.shapes' label order (for IS)."""

    SPATIAL_CHANNELS = 2
    dims = (FEATURES, 4 * 4 * SPATIAL_CHANNELS, len(COLORS) * len(SHAPES))

    def __init__(self, net: ShapesClassifier) -> None:
        super().__init__()
        self.net = net
        self.network_id = f"shapes-adm-{getattr(net, 'weights_id', 'unhashed')}"
        self._conv, self._pool = net.split()  # the spatial map | the features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conv = self._conv(x.float() / 127.5 - 1.0)            # (N, 64, 4, 4)
        pool = self._pool(conv)
        spatial = conv.movedim(1, -1)[..., : self.SPATIAL_CHANNELS].reshape(len(x), -1)
        color = self.net.heads["color"](pool).log_softmax(1)  # (N, 4)
        shape = self.net.heads["shape"](pool).log_softmax(1)  # (N, 3)
        logits = (color[:, :, None] + shape[:, None, :]).reshape(len(x), -1)  # label = colour * 3 + shape
        return pool, spatial, logits
