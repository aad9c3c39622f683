"""The method interface: a validated config, the number of sampling steps, a plan and a ranking.

A method is small on purpose: everything that touches the model goes through the one
engine in methods/engine.py, and nothing model-specific lives in a method module: where the specs give
per-model constants (ToCa's refresh formulas, spatial bonus, how CFG rows choose tokens), they are
settings with the PixArt values as defaults, and config.yaml sets them per model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from methods.plan import Plan
from methods.rankings import Ranking


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a method may know of the model: its depth, the kind of each sub-layer, and which way its
    sampler's step index counts (methods/schedules.py: FORA, ToCa and DuCa test that clock)."""
    blocks: int
    sublayers: tuple[str, ...]
    kinds: tuple[str, ...]   # "self_attn" | "cross_attn" | "mlp", aligned with sublayers
    clock: str = "up"        # "up": 0 … S−1 (DPM-Solver, flow samplers); "down": S−1 … 0 (DDIM, DDPM)

    def index(self, kind: str) -> int | None:
        return self.kinds.index(kind) if kind in self.kinds else None


class Method:
    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass; __post_init__ validates and names the bad key

    def __init__(self, **settings: Any):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = set(settings) - fields
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown setting(s) {sorted(unknown)}; "
                             f"valid: {sorted(fields) or 'none'}")
        self.config = self.Config(**settings)

    def num_steps(self, base_steps: int) -> int:
        """Sampling steps this method runs when the model's schedule has `base_steps`."""
        return base_steps

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        """The static plan; the default computes everything."""
        return Plan.full(num_steps, layout.blocks, layout.sublayers)

    def ranking(self) -> Ranking | None:
        """How partial sub-layers choose their tokens (None: the plan has no partial ratios)."""
        return None


def check_ratio(method: str, key: str, value: float, *, low_open: bool = False) -> None:
    bad = not isinstance(value, (int, float)) or not (0 < value <= 1 if low_open else 0 <= value <= 1)
    if bad:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{method}.{key} must be in {interval}, got {value!r}")


def check_positive_int(method: str, key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{method}.{key} must be an integer >= 1, got {value!r}")
