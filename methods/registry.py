"""Method registry: name -> Method class."""
from __future__ import annotations

from methods.base import Method
from methods.none import NoAcceleration
from methods.steps import StepReduction

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (NoAcceleration, StepReduction)}


def make_method(name: str, **settings) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](**settings)
