"""What every peer row shares: a method whose cache is another library's, attached through its public API.

A peer (diffusers' cache hooks, cache-dit's DBCache) decides at run time inside its own hooks, so it has no
plan: our engine is not attached at all, MACs are counted from real runs (dsbench/measure.py), and a peer
whose decisions read the whole denoiser batch samples one image at a time (`per_image`), as DiCache does.
Its settings are the peer's own config fields (names and defaults as the library has them, unless the
class docstring says otherwise); what only the model knows (the step count, the CFG layout, the tensor
format) is filled in when it attaches.
"""
from __future__ import annotations

from typing import ClassVar

from methods.base import Method


class PeerUnsupported(ValueError):
    """The peer library cannot run on this model family (the reason is the library's, not ours)."""


class PeerRun:
    """One attached peer: `reset()` before each pipeline call, `detach()` at the end; `stats()` what the
    library itself reports (cache-dit's summary), for the metrics JSON. The attribute names mirror the
    engine's, so a cell samples through either the same way."""

    controller = None
    plan = None

    def __init__(self, per_image: bool):
        self.per_image = per_image

    def reset(self) -> None:
        """Forget every cached tensor and step counter of the previous call."""

    def for_samples(self, keys) -> None:
        """Peers draw no per-sample random choices."""

    def stats(self) -> dict:
        return {}

    def detach(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


class PeerMethod(Method):
    attaches_peer = True
    library: ClassVar[str]            # the PyPI distribution that owns the cache ("diffusers", "cache-dit")
    per_image: ClassVar[bool] = False  # its decisions read the batch: sample one image per call
    # model family -> why the library cannot run there (data: dsbench's cell refuses before building anything,
    # as it does for a replacing denoiser's `denoiser_families`).
    unsupported: ClassVar[dict[str, str]] = {}

    def attach(self, pipe, adapter, num_steps: int, guidance_scale: float) -> PeerRun:
        """Install the library's cache on `pipe` for runs of `num_steps` steps; returns the handle."""
        raise NotImplementedError
