"""Streaming CLIP scores, in two modes (``MODES``):

- ``correct`` (``ClipScore``): mean raw cosine between open_clip ViT-L/14 embeddings of uint8 images
  and of their captions, on the 0-1 scale (``x100`` for torchmetrics' scale). No logit scale and no
  clamping (Hessel et al. clamp per sample and multiply by 2.5).
- ``toca_compat`` (``TocaCompatClipScore``): the protocol behind the paper's 0.164 (ToCa's
  ``clip_score.py``): images as float [0,1] tensors into torchmetrics' CLIPScore, whose HF processor
  rescales by 1/255 a second time, so every image it scores is nearly black; result / 100. Kept to
  compare with the paper's column, not as a measure of alignment.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from metrics.images import check_uint8_rgb

MODES = ("correct", "toca_compat")


def check_mode(mode: str) -> None:
    if mode not in MODES + ("both",):
        raise ValueError(f"unknown CLIP score mode {mode!r}; valid modes: {', '.join(MODES)}, both")


def _check_pairs(images, captions) -> None:
    if isinstance(captions, str) or len(captions) != len(images):
        raise ValueError(f"need one caption per image: {len(images)} images, "
                         f"{1 if isinstance(captions, str) else len(captions)} captions")


class ClipScore:
    """``correct`` mode: ``compute()`` is the mean cosine (0-1 scale); ``x100`` is 100 x that."""

    def __init__(self, bundle, device: str | torch.device = "cpu", mode: str = "correct") -> None:
        if mode != "correct":
            check_mode(mode)
            raise ValueError(f"ClipScore is the 'correct' mode; use TocaCompatClipScore for {mode!r}")
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
        check_uint8_rgb(images, "CLIP images")
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
        _check_pairs(images, captions)
        if len(captions) == 0:
            return
        cos = (self.image_embeddings(images) * self.text_embeddings(captions)).sum(dim=-1)
        self._sum += float(cos.double().sum())
        self.n += len(captions)

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("ClipScore.compute() called before any update()")
        return self._sum / self.n

    def x100(self) -> float:
        return 100.0 * self.compute()


class TocaCompatClipScore:
    """``toca_compat`` mode: ToCa's protocol, reproduced through torchmetrics' own CLIPScore.

    ``model, processor`` come from ``metrics.networks.load_transformers_clip``. Samples are stored
    as uint8; ``update`` turns them into what ToCa passed (``ToTensor()(img)``: float [0,1] CHW).
    ``compute()`` is torchmetrics' score (100 x the mean cosine, clamped at 0) / 100.
    """

    def __init__(self, model, processor, device: str | torch.device = "cpu") -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)
        self.device = torch.device(device)

    def reset(self) -> None:
        self.metric.reset()

    @property
    def n(self) -> int:
        return int(self.metric.n_samples)

    def update(self, images: np.ndarray, captions: Sequence[str]) -> None:
        check_uint8_rgb(images, "CLIP images")
        _check_pairs(images, captions)
        if len(captions) == 0:
            return
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)  # ToTensor()
        self.metric.update(list(x.to(self.device)), list(captions))

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("TocaCompatClipScore.compute() called before any update()")
        return float(self.metric.compute()) / 100.0
