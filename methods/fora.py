"""`fora`: FORA (Selvaraju et al. 2024). The first step and every step whose sampler clock is a multiple
of `interval` compute; the others reuse every sub-layer's cached output, gated by the block with the
current step's gate. The official code tests DiT's DDIM countdown index (S − 1 … 0), so on DiT-50 with
N = 3 it computes 18 steps (0, 1, 4, …, 49); on an up-counting sampler this is s mod N == 0."""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, per_group, check_positive_int
from methods.plan import Plan
from methods.schedules import periodic_steps


class FORA(Method):
    name = "fora"

    @dataclass(frozen=True)
    class Config:
        """interval: N, the refresh period in steps (full at the first step and at clock mod N == 0)."""

        interval: int = 2

        def __post_init__(self):
            check_positive_int("fora", "interval", self.interval)

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        full = periodic_steps(num_steps, self.config.interval, layout.clock)

        def group_plan(g, first):
            ratios = torch.zeros(num_steps, g.blocks, len(g.sublayers))
            ratios[full] = 1.0
            return ratios, None
        return per_group(layout, group_plan)
