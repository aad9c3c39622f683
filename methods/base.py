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
from methods.settings import build, invalid


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
    # A dataclass, the one place a method's settings are declared: names, types (checked by
    # methods.settings.build), defaults, and their meaning in its docstring; __post_init__ checks ranges.
    Config: ClassVar[type]

    def __init__(self, **settings: Any):
        self.config = build(self.Config, settings, self.name)

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
        raise invalid(method, key, f"must be in {interval}, got {value!r}")


def check_positive_int(method: str, key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(method, key, f"must be an integer >= 1, got {value!r}")


def check_at_least(method: str, key: str, value: float, low: float, *, integer: bool = False) -> None:
    bad = (isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not value >= low)
    if bad:
        raise invalid(method, key, f"must be {'an integer' if integer else 'a number'} >= {low}, got {value!r}")
