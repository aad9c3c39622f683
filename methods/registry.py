"""Method registry: name -> Method class."""
from __future__ import annotations

from methods.base import Method
from methods.deepcache import DeepCache
from methods.dicache import DiCache
from methods.diffsparse.method import DiffSparse
from methods.duca import DuCa
from methods.fora import FORA
from methods.none import NoAcceleration
from methods.peers import PEERS
from methods.sparsedit import SparseDiT
from methods.steps import StepReduction
from methods.taylorseer import TaylorSeer
from methods.toca import ToCa

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (NoAcceleration, StepReduction, FORA, DeepCache, TaylorSeer, ToCa, DuCa, DiCache,
                                   DiffSparse, SparseDiT, *PEERS)
}


def make_method(name: str, **settings) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](**settings)
