"""`fora`: FORA (Selvaraju et al. 2024). Every `interval`-th step computes; the others reuse every
sub-layer's cached output, gated by the block with the current step's gate."""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, check_positive_int
from methods.plan import Plan
from methods.schedules import interval_steps


class FORA(Method):
    name = "fora"

    @dataclass(frozen=True)
    class Config:
        """interval: N, the refresh period in steps (full at s mod N == 0)."""

        interval: int = 2

        def __post_init__(self):
            check_positive_int("fora", "interval", self.interval)

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        ratios = torch.zeros(num_steps, layout.blocks, len(layout.sublayers))
        ratios[interval_steps(num_steps, self.config.interval)] = 1.0
        return Plan(ratios, layout.sublayers)
