"""`taylorseer`: TaylorSeer (Liu et al., ICCV'25). Full steps form divided differences of every
sub-layer's output; other steps forecast it with Σ Δⁱf · kⁱ/i! (k: steps since the last full step)."""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, check_positive_int
from methods.plan import Plan
from methods.schedules import interval_steps


class TaylorSeer(Method):
    name = "taylorseer"

    @dataclass(frozen=True)
    class Config:
        """interval: full every `interval` steps after warm-up; max_order: Taylor order of the forecast;
        first_enhance: warm-up steps computed fully (differences start at step first_enhance − 1)."""

        interval: int = 2
        max_order: int = 2
        first_enhance: int = 2

        def __post_init__(self):
            for key in ("interval", "max_order", "first_enhance"):
                check_positive_int("taylorseer", key, getattr(self, key))

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        c = self.config
        ratios = torch.zeros(num_steps, layout.blocks, len(layout.sublayers))
        ratios[interval_steps(num_steps, c.interval, warmup=c.first_enhance)] = 1.0
        return Plan(ratios, layout.sublayers, forecast_order=c.max_order,
                    forecast_from_step=max(c.first_enhance - 1, 1))
