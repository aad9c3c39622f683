"""DiffSparse's items over block groups: (step, group, block, sub-layer), laid out for the cost matrix.

A one-group model keeps its items as (blocks, sub-layers) per step, the layout its schedules have
always had. A model of several groups (FLUX's dual- and single-stream blocks, whose sub-layers differ)
lines its items up as one row per step: every (block, sub-layer) of the first group, then of the next.
The DP, the cost matrix and the budget only ever see items; the engine and the heatmaps see groups.
"""
from __future__ import annotations

import torch


def item_shape(groups) -> tuple[int, int]:
    """Items per step as (blocks, sub-layers) for one group, (1, Σ blocks·sub-layers) for several.
    `groups`: objects with `blocks` and `sublayers` (methods.base.Group, or Schedule's group tuples)."""
    groups = list(groups)
    if len(groups) == 1:
        return groups[0].blocks, len(groups[0].sublayers)
    return 1, sum(g.blocks * len(g.sublayers) for g in groups)


def split(t: torch.Tensor, groups) -> list[torch.Tensor]:
    """(steps, *item_shape, …) -> per group (steps, blocks, sub-layers, …)."""
    groups = list(groups)
    if len(groups) == 1:
        return [t]
    flat, out, start = t.flatten(1, 2), [], 0
    for g in groups:
        n = g.blocks * len(g.sublayers)
        out.append(flat[:, start:start + n].unflatten(1, (g.blocks, len(g.sublayers))))
        start += n
    return out


def join(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per group (steps, blocks, sub-layers, …) -> (steps, *item_shape, …)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p.flatten(1, 2) for p in parts], dim=1).unsqueeze(1)
