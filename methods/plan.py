"""A plan: what each sampling step does in each block group, block and sub-layer.

A model has one or more block groups (FLUX: 19 dual-stream blocks, then 38 single-stream ones; PixArt,
DiT and Wan: one group). Per group, a `GroupPlan` holds
- `ratios` (steps, blocks, sublayers): the fraction of tokens a sub-layer computes. 1.0 computes every
  token; 0.0 reuses its cached output (a copy, or a Taylor forecast when `forecast_order` > 0);
  0 < r < 1 computes k = int(r·N) tokens of each of its token streams, chosen by the method's ranking,
  and reuses the rest;
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
SINGLE_GROUP = "blocks"   # the name of the one group of a single-group plan built without a layout


@dataclass(frozen=True)
class GroupPlan:
    ratios: torch.Tensor                # float (steps, blocks, sublayers), values in [0, 1]
    sublayers: tuple[str, ...]
    skip: torch.Tensor | None = None    # int8 (steps, blocks): COMPUTE / SKIP_RESIDUAL / SKIP_OUTPUT
    name: str = SINGLE_GROUP

    def __post_init__(self):
        r = self.ratios
        if r.dim() != 3 or r.shape[2] != len(self.sublayers):
            raise ValueError(f"plan{self._where} must be (steps, blocks, {len(self.sublayers)}); got {tuple(r.shape)}")
        if not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            raise ValueError(f"plan ratios{self._where} must lie in [0, 1]")
        if self.skip is not None and tuple(self.skip.shape) != tuple(r.shape[:2]):
            raise ValueError(f"skip{self._where} must be (steps, blocks) = {tuple(r.shape[:2])}; "
                             f"got {tuple(self.skip.shape)}")
        if (r[0] < 1).any() or (self.skip is not None and (self.skip[0] != COMPUTE).any()):
            raise ValueError("a plan must compute every token at step 0: there is no cache to reuse yet")

    @property
    def _where(self) -> str:
        return "" if self.name == SINGLE_GROUP else f" of group {self.name!r}"

    @property
    def blocks(self) -> int:
        return self.ratios.shape[1]

    def full_step_mask(self) -> torch.Tensor:
        done = (self.ratios >= 1).flatten(1).all(1)
        if self.skip is not None:
            done &= (self.skip == COMPUTE).all(1)
        return done


class Plan:
    """Per-group plans of one run plus the forecast settings they share.

    `Plan(ratios, sublayers, skip)` is the one-group form (PixArt, DiT, Wan); `Plan(groups=[...])` the
    general one. The one-group attributes (`ratios`, `sublayers`, `skip`, `blocks`) refuse a plan of
    several groups rather than answer for its first group.
    """

    def __init__(self, ratios: torch.Tensor | None = None, sublayers: tuple[str, ...] | None = None,
                 skip: torch.Tensor | None = None, forecast_order: int = 0, forecast_from_step: int = 1, *,
                 groups: list[GroupPlan] | tuple[GroupPlan, ...] | None = None):
        if groups is None:
            if ratios is None or sublayers is None:
                raise ValueError("a plan needs ratios and sublayers, or groups")
            groups = (GroupPlan(ratios, tuple(sublayers), skip),)
        elif ratios is not None or skip is not None:
            raise ValueError("give a plan either groups or one group's ratios/skip, not both")
        self.groups: tuple[GroupPlan, ...] = tuple(groups)
        if not self.groups:
            raise ValueError("a plan needs at least one block group")
        steps = {g.ratios.shape[0] for g in self.groups}
        if len(steps) != 1:
            raise ValueError(f"every group of a plan must have the same steps; got {sorted(steps)}")
        if len({g.name for g in self.groups}) != len(self.groups):
            raise ValueError(f"duplicate group names in a plan: {[g.name for g in self.groups]}")
        if forecast_order < 0:
            raise ValueError("forecast_order must be >= 0")
        self.forecast_order, self.forecast_from_step = forecast_order, forecast_from_step

    @classmethod
    def full(cls, steps: int, blocks, sublayers: tuple[str, ...] | None = None) -> "Plan":
        """Every token computed: `full(steps, layout)`, or `full(steps, blocks, sublayers)` for one group."""
        if sublayers is not None:
            return cls(torch.ones(steps, blocks, len(sublayers)), tuple(sublayers))
        return cls(groups=[GroupPlan(torch.ones(steps, g.blocks, len(g.sublayers)), g.sublayers, name=g.name)
                           for g in blocks.groups])

    # ---- one-group view --------------------------------------------------------------------------
    def _only(self) -> GroupPlan:
        if len(self.groups) != 1:
            raise ValueError(f"this plan has {len(self.groups)} block groups "
                             f"({', '.join(g.name for g in self.groups)}): read plan.groups")
        return self.groups[0]

    @property
    def ratios(self) -> torch.Tensor:
        return self._only().ratios

    @property
    def sublayers(self) -> tuple[str, ...]:
        return self._only().sublayers

    @property
    def skip(self) -> torch.Tensor | None:
        return self._only().skip

    @property
    def blocks(self) -> int:
        return self._only().blocks

    # ---- every group ------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.groups[0].ratios.shape[0]

    def full_steps(self) -> list[int]:
        """Steps that compute every token of every sub-layer of every block of every group."""
        done = torch.stack([g.full_step_mask() for g in self.groups]).all(0)
        return done.nonzero().flatten().tolist()

    def skip_mode(self, step: int, block: int, group: int = 0) -> int:
        skip = self.groups[group].skip
        return COMPUTE if skip is None else int(skip[step, block])
