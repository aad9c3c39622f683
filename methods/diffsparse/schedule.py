"""A DiffSparse schedule: the sparsity chosen for every item, and its file format.

Items are (step, block, sub-layer) for every step after the first (step 0 always computes in full:
there is no cache yet). Candidate u ∈ {0 … S−1} means sparsity u·interval: that fraction of the item's
tokens reuses the cache, and keep(u) = 1 − u·interval of them is recomputed. The schedule depends on
the number of steps T and the layout (blocks × sub-layers), never on the token count, so a schedule
trained at 256 px runs at 512 px (Table 4); another T or layout is an error, not a silent resize.

On disk: `<name>.safetensors` holds `units` (T−1, blocks, sub-layers) int64 and the learned `cost`
(items, S) float32; `<name>.json` beside it holds the provenance (model, T, layout, interval, R,
budget, settings, loss curve). Both are written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from methods.plan import Plan


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

    def __post_init__(self):
        S = len(candidates(self.interval))
        u = self.units
        if u.dim() != 3 or u.shape[2] != len(self.sublayers):
            raise ValueError(f"schedule units must be (steps-1, blocks, {len(self.sublayers)}); got {tuple(u.shape)}")
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

    def plan(self) -> Plan:
        ratios = torch.ones(self.steps, self.blocks, len(self.sublayers))
        ratios[1:] = (1.0 - self.sparsity).float()
        return Plan(ratios, self.sublayers)

    def check_fits(self, num_steps: int, blocks: int, sublayers: tuple[str, ...], where: str = "") -> None:
        if (num_steps, blocks, tuple(sublayers)) != (self.steps, self.blocks, self.sublayers):
            raise ValueError(
                f"{where or 'schedule'} was trained for T={self.steps} steps × {self.blocks} blocks × "
                f"{self.sublayers}; this run has T={num_steps} × {blocks} blocks × {tuple(sublayers)}. "
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
        write_json(path.with_suffix(".json"), {**self.meta, "interval": self.interval, "steps": self.steps,
                                               "blocks": self.blocks, "sublayers": list(self.sublayers),
                                               "mean_sparsity": self.mean_sparsity()})
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
        return cls(tensors["units"], float(meta["interval"]), tuple(meta["sublayers"]), tensors.get("cost"),
                   {k: v for k, v in meta.items() if k not in ("interval", "sublayers", "steps", "blocks")})
