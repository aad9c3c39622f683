"""The method interface: a validated config, the number of sampling steps, and a plan.

A method is small on purpose (see DESIGN.md): everything that touches the model goes through the one
engine in methods/engine.py, and nothing model-specific lives in a method module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from methods.plan import Plan


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

    def plan(self, num_steps: int, num_blocks: int, sublayers: tuple[str, ...]) -> Plan:
        """The static plan; the default computes everything."""
        return Plan.full(num_steps, num_blocks, sublayers)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self.config)}


def check_ratio(method: str, key: str, value: float, *, low_open: bool = False) -> None:
    bad = not isinstance(value, (int, float)) or not (0 < value <= 1 if low_open else 0 <= value <= 1)
    if bad:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{method}.{key} must be in {interval}, got {value!r}")
