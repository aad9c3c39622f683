"""A DiffSparse schedule: the sparsity chosen for every item, and its file format.

Items are (step, group, block, sub-layer) for every step after the first (step 0 always computes in
full: there is no cache yet); methods/diffsparse/items.py says how several block groups line up. Candidate u ∈ {0 … S−1} means sparsity u·interval: that fraction of the item's
tokens reuses the cache, and keep(u) = 1 − u·interval of them is recomputed. The schedule depends on
the number of steps T and the layout (blocks × sub-layers), never on the token count, so a schedule
trained at 256 px runs at 512 px (Table 4); another T or layout is an error, not a silent resize.

On disk: `<name>.safetensors` holds `units` (T−1, blocks, sub-layers) int64 — (T−1, 1, items per step)
for a model of several groups, whose names and shapes the JSON's `groups` records — and the learned
`cost` (items, S) float32; `<name>.json` beside it holds the provenance (model, T, layout, interval, R,
budget, settings, loss curve). Both are written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from methods.diffsparse.items import item_shape, split
from methods.plan import GroupPlan, Plan


class ScheduleGroup(NamedTuple):
    name: str
    blocks: int
    sublayers: tuple[str, ...]


def candidates(interval: float) -> list[float]:
    """Sparsity levels {0, interval, …, 1}; the interval must divide 1 (0.25 → 5 candidates)."""
    if not 0 < interval <= 1:
        raise ValueError(f"diffsparse.interval must be in (0, 1], got {interval!r}")
    n = round(1 / interval)
    if abs(n * interval - 1) > 1e-9:
        raise ValueError(f"diffsparse.interval must divide 1 (0.25, 0.2, 0.125 …), got {interval!r}")
    return [u / n for u in range(n + 1)]


def keep_fractions(interval: float) -> list[float]:
    """Fraction of tokens each candidate recomputes: 1 − sparsity."""
    return [1.0 - s for s in candidates(interval)]


@dataclass
class Schedule:
    units: torch.Tensor                      # int64 (T−1, blocks, sub-layers)
    interval: float
    sublayers: tuple[str, ...]
    cost: torch.Tensor | None = None         # (items, S) the learned cost matrix, if trained
    meta: dict = field(default_factory=dict)
    groups: tuple[ScheduleGroup, ...] | None = None   # several block groups (sublayers is then ())

    def __post_init__(self):
        S = len(candidates(self.interval))
        u = self.units
        if self.groups is not None:
            self.groups = tuple(ScheduleGroup(n, int(b), tuple(s)) for n, b, s in self.groups)
        want = item_shape(self.groups) if self.groups else (None, len(self.sublayers))
        if u.dim() != 3 or u.shape[2] != want[1] or (want[0] is not None and u.shape[1] != want[0]):
            raise ValueError(f"schedule units must be (steps-1, {want[0] or 'blocks'}, {want[1]}); got {tuple(u.shape)}")
        if (u < 0).any() or (u >= S).any():
            raise ValueError(f"schedule units must lie in [0, {S - 1}] for interval {self.interval}")

    @property
    def steps(self) -> int:
        return self.units.shape[0] + 1

    @property
    def blocks(self) -> int:
        return self.units.shape[1]

    @property
    def sparsity(self) -> torch.Tensor:
        """(T−1, blocks, sub-layers) sparsity of every item."""
        return self.units.double() * self.interval

    def mean_sparsity(self) -> float:
        return float(self.sparsity.mean())

    def group_units(self) -> list[tuple[str, tuple[str, ...], torch.Tensor]]:
        """(group name, its sub-layers, units (T−1, blocks, sub-layers)) per block group."""
        if self.groups is None:
            from methods.plan import SINGLE_GROUP

            return [(SINGLE_GROUP, self.sublayers, self.units)]
        return [(g.name, g.sublayers, u) for g, u in zip(self.groups, split(self.units, self.groups))]

    def plan(self) -> Plan:
        parts = []
        for name, sublayers, units in self.group_units():
            ratios = torch.ones(self.steps, units.shape[1], len(sublayers))
            ratios[1:] = (1.0 - units.double() * self.interval).float()
            parts.append(GroupPlan(ratios, sublayers, name=name))
        return Plan(groups=parts)

    def layout_shape(self) -> list:
        return [(name, units.shape[1], tuple(subs)) for name, subs, units in self.group_units()]

    def check_fits(self, num_steps: int, layout, where: str = "") -> None:
        """Refuse a run of another T or layout (a schedule does not depend on the resolution)."""
        theirs = [(g.name, g.blocks, tuple(g.sublayers)) for g in layout.groups]
        if (num_steps, theirs) != (self.steps, self.layout_shape()):
            raise ValueError(
                f"{where or 'schedule'} was trained for T={self.steps} steps × {_shape(self.layout_shape())}; "
                f"this run has T={num_steps} × {_shape(theirs)}. "
                "A schedule depends on T and the layout (not the resolution): train one for this setting")

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write `path` (.safetensors) and its .json provenance, each atomically; JSON first, so a
        schedule file never exists without its provenance."""
        from safetensors.torch import save_file

        from dsbench.io import atomic_path, write_json

        path = Path(path)
        tensors = {"units": self.units.to(torch.int64).contiguous()}
        if self.cost is not None:
            tensors["cost"] = self.cost.detach().float().contiguous()
        groups = {"groups": [[g.name, g.blocks, list(g.sublayers)] for g in self.groups]} if self.groups else {}
        write_json(path.with_suffix(".json"), {**self.meta, "interval": self.interval, "steps": self.steps,
                                               "blocks": self.blocks, "sublayers": list(self.sublayers),
                                               **groups, "mean_sparsity": self.mean_sparsity()})
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> "Schedule":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from dsbench.io import read_json

        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            missing = path if not path.is_file() else meta_path
            raise FileNotFoundError(f"no trained DiffSparse schedule at {missing}: train it first "
                                    f"(snakemake {path}, or `dsbench train-schedule`)")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"corrupt schedule file {path}: {e}; delete it and train again") from e
        meta = read_json(meta_path)
        if "units" not in tensors:
            raise ValueError(f"corrupt schedule file {path}: no 'units' tensor")
        try:
            return cls(tensors["units"], float(meta["interval"]), tuple(meta["sublayers"]), tensors.get("cost"),
                       {k: v for k, v in meta.items() if k not in ("interval", "sublayers", "steps", "blocks", "groups")},
                       groups=meta.get("groups"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"schedule {path} does not match its provenance {meta_path.name}: {e}; "
                             "delete both and train again") from e


def _shape(groups: list) -> str:
    if len(groups) == 1:
        return f"{groups[0][1]} blocks × {tuple(groups[0][2])}"
    return " + ".join(f"{name}: {blocks} blocks × {tuple(subs)}" for name, blocks, subs in groups)
