"""Streaming CLIP score: mean raw cosine between image and caption embeddings.

No logit scale (torchmetrics reports 100*cos) and no clamping (Hessel et al. clamp per
sample and multiply by 2.5); this is the plain cosine the paper's table is on.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

# "toca_compat" (float [0,1] into torchmetrics CLIPScore, /100) comes with the metrics issue.
MODES = ("correct",)


class ClipScore:
    def __init__(self, bundle, device: str | torch.device = "cpu", mode: str = "correct") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown CLIP score mode {mode!r}; valid modes: {', '.join(MODES)}")
        self.bundle, self.device, self.mode = bundle, torch.device(device), mode
        self.reset()

    def reset(self) -> None:
        self.n, self._sum = 0, 0.0

    @staticmethod
    def _unit(e: torch.Tensor, what: str) -> torch.Tensor:
        norm = e.norm(dim=-1, keepdim=True)
        if not torch.isfinite(e).all() or (norm <= 1e-12).any():
            raise ValueError(f"zero-norm or non-finite {what} embedding")
        return e / norm

    def image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """L2-normalised (N, D) embeddings of uint8 (N,H,W,3) RGB images."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            # float [0,1] input is what made ToCa's CLIP numbers artefactual (rescaled twice
            # -> near-black images); only uint8 [0,255] is accepted in "correct" mode.
            raise TypeError(f"CLIP images must be a uint8 numpy array in [0,255], "
                            f"got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N,H,W,3) RGB, got shape {images.shape}")
        x = torch.stack([self.bundle.preprocess(Image.fromarray(im)) for im in images])
        with torch.no_grad():
            e = self.bundle.model.encode_image(x.to(self.device)).float()
        return self._unit(e, "image")

    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = self.bundle.tokenizer(list(captions))  # truncates to the 77-token context
        with torch.no_grad():
            e = self.bundle.model.encode_text(tokens.to(self.device)).float()
        return self._unit(e, "text")

    def update(self, images: np.ndarray, captions: Sequence[str]) -> None:
        if isinstance(captions, str) or len(captions) != len(images):
            raise ValueError(f"need one caption per image: {len(images)} images, "
                             f"{1 if isinstance(captions, str) else len(captions)} captions")
        if len(captions) == 0:
            return
        cos = (self.image_embeddings(images) * self.text_embeddings(captions)).sum(dim=-1)
        self._sum += float(cos.double().sum())
        self.n += len(captions)

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("ClipScore.compute() called before any update()")
        return self._sum / self.n
