"""uint8 image batches, the input every metric takes: the one guard and the one re-batcher."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def check_uint8_rgb(x, what: str = "images") -> None:
    """uint8 [0,255] (N,H,W,3) RGB. Float [0,1] input is refused on purpose: it is what made ToCa's
    CLIP numbers artefactual (rescaled twice, near-black), and a silent rescale hides such mistakes."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise TypeError(f"{what} must be a uint8 numpy array in [0,255], got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} must be (N,H,W,3) RGB, got shape {x.shape}")


def check_square(x: np.ndarray, resolution: int | None) -> None:
    """Checked uint8 RGB, square, and at the configured resolution when one is given."""
    check_uint8_rgb(x)
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"images must be square, got {x.shape[1]}x{x.shape[2]}")
    if resolution is not None and x.shape[1] != resolution:
        raise ValueError(f"images are {x.shape[1]}px but the configured resolution is {resolution}px")


def rebatch(batches: Iterable[np.ndarray], size: int, resolution: int | None) -> Iterator[np.ndarray]:
    """Checked square uint8 (N,H,W,3) batches re-cut to ``size`` images (the last one may be smaller),
    so features never depend on how samples were sharded."""
    pending, n = [], 0
    for batch in batches:
        check_square(batch, resolution)
        while len(batch):
            take = batch[: size - n]
            pending.append(take)
            n += len(take)
            batch = batch[len(take):]
            if n == size:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, n = [], 0
    if n:
        yield np.concatenate(pending)
