"""A plan: for each sampling step, block and sub-layer, the fraction of tokens to compute.

1.0 computes every token, 0.0 reuses the cached output, and 0 < r < 1 computes round(r * N) tokens
chosen by a ranking (the token path; it lands with the token-cache engine). Static methods are
exactly such a tensor, so the same object drives the engine, MAC accounting and the schedule heatmap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    ratios: torch.Tensor          # float (steps, blocks, sublayers), values in [0, 1]
    sublayers: tuple[str, ...]

    def __post_init__(self):
        r = self.ratios
        if r.dim() != 3 or r.shape[2] != len(self.sublayers):
            raise ValueError(f"plan must be (steps, blocks, {len(self.sublayers)}); got {tuple(r.shape)}")
        if not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            raise ValueError("plan ratios must lie in [0, 1]")
        first = r[0]
        if (first < 1).any():
            raise ValueError("a plan must compute every token at step 0: there is no cache to reuse yet")

    @classmethod
    def full(cls, steps: int, blocks: int, sublayers: tuple[str, ...]) -> "Plan":
        return cls(torch.ones(steps, blocks, len(sublayers)), tuple(sublayers))

    @property
    def steps(self) -> int:
        return self.ratios.shape[0]

    @property
    def blocks(self) -> int:
        return self.ratios.shape[1]

    def ratio(self, step: int, block: int, sublayer: str) -> float:
        return float(self.ratios[step, block, self.sublayers.index(sublayer)])

    def compute_fraction(self) -> float:
        """Mean fraction of sub-layer work computed (unweighted by sub-layer cost)."""
        return float(self.ratios.mean())
