"""A plan: what each sampling step does in each block and sub-layer.

- `ratios` (steps, blocks, sublayers): the fraction of tokens a sub-layer computes. 1.0 computes every
  token; 0.0 reuses its cached output (a copy, or a Taylor forecast when `forecast_order` > 0);
  0 < r < 1 computes k = int(r·N) tokens chosen by the method's ranking and reuses the rest.
- `skip` (steps, blocks), optional: SKIP_RESIDUAL runs none of the block and adds the residual it
  produced the last time it ran (DeepCache, DiCache); SKIP_OUTPUT returns the block's last output
  (DuCa's aggressive step). A skipped block ignores its ratios.
Static methods are exactly such tensors, so one object drives the engine, MAC prediction and the
schedule heatmap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COMPUTE, SKIP_RESIDUAL, SKIP_OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class Plan:
    ratios: torch.Tensor                # float (steps, blocks, sublayers), values in [0, 1]
    sublayers: tuple[str, ...]
    skip: torch.Tensor | None = None    # int8 (steps, blocks): COMPUTE / SKIP_RESIDUAL / SKIP_OUTPUT
    forecast_order: int = 0             # Taylor order of reused outputs (0: plain copy)
    forecast_from_step: int = 1         # differences are formed only from full steps at or after this one

    def __post_init__(self):
        r = self.ratios
        if r.dim() != 3 or r.shape[2] != len(self.sublayers):
            raise ValueError(f"plan must be (steps, blocks, {len(self.sublayers)}); got {tuple(r.shape)}")
        if not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            raise ValueError("plan ratios must lie in [0, 1]")
        if (r[0] < 1).any() or (self.skip is not None and (self.skip[0] != COMPUTE).any()):
            raise ValueError("a plan must compute every token at step 0: there is no cache to reuse yet")
        if self.skip is not None and tuple(self.skip.shape) != tuple(r.shape[:2]):
            raise ValueError(f"skip must be (steps, blocks) = {tuple(r.shape[:2])}; got {tuple(self.skip.shape)}")
        if self.forecast_order < 0:
            raise ValueError("forecast_order must be >= 0")

    @classmethod
    def full(cls, steps: int, blocks: int, sublayers: tuple[str, ...]) -> "Plan":
        return cls(torch.ones(steps, blocks, len(sublayers)), tuple(sublayers))

    @property
    def steps(self) -> int:
        return self.ratios.shape[0]

    @property
    def blocks(self) -> int:
        return self.ratios.shape[1]

    def full_steps(self) -> list[int]:
        """Steps that compute every token of every sub-layer of every block."""
        done = (self.ratios >= 1).flatten(1).all(1)
        if self.skip is not None:
            done &= (self.skip == COMPUTE).all(1)
        return done.nonzero().flatten().tolist()

    def skip_mode(self, step: int, block: int) -> int:
        return COMPUTE if self.skip is None else int(self.skip[step, block])
