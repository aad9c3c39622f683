"""What a reused sub-layer returns: its cached output, or a Taylor forecast of it (TaylorSeer).

The cache of one (group, block, sub-layer, stream) is a `SublayerState`; the engine fills it on
computed steps and reads it on reused ones through the two functions below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class SublayerState:
    """Cache of one (group, block, sub-layer, stream): its last output, the inputs it was computed on,
    the steps since each token was computed, and the Taylor differences at the last full step."""
    output: torch.Tensor | None = None
    last_input: torch.Tensor | None = None
    staleness: torch.Tensor | None = None     # int (B, N)
    taylor: list[torch.Tensor] = field(default_factory=list)   # f, Δf, Δ²f ... at the last full step
    full_step: int | None = None

    def copy(self) -> "SublayerState":
        """A shallow copy: every update makes new tensors, so references suffice (training snapshots)."""
        return SublayerState(self.output, self.last_input, self.staleness, list(self.taylor), self.full_step)


def update_taylor(state: SublayerState, out: torch.Tensor, step: int, order: int, from_step: int) -> None:
    """TaylorSeer's divided differences between consecutive full steps: Δⁱ⁺¹ = (Δⁱ_now − Δⁱ_before) / d,
    d the steps between them (its official code's recursion, not the paper's Δⁱ/Nⁱ); differences are
    formed only from full steps at or after `from_step`."""
    new = [out]
    if state.full_step is not None and step >= from_step:
        d = step - state.full_step
        for i in range(min(len(state.taylor), order)):
            new.append((new[i] - state.taylor[i]) / d)
    state.taylor, state.full_step = new, step


def reused(state: SublayerState, step: int, order: int) -> torch.Tensor:
    """The cached output, or its Taylor expansion k steps after the last full step."""
    if not order or len(state.taylor) < 2:
        return state.output
    k = step - state.full_step
    return sum(d * (k ** i / math.factorial(i)) for i, d in enumerate(state.taylor))
