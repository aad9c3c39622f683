"""`taylorseer`: TaylorSeer (Liu et al., ICCV'25). Full steps form divided differences of every
sub-layer's output; other steps forecast it with Σ Δⁱf · kⁱ/i! (k: steps since the last full step)."""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, per_group, check_positive_int
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
        full = interval_steps(num_steps, c.interval, warmup=c.first_enhance)

        def group_plan(g, first):
            ratios = torch.zeros(num_steps, g.blocks, len(g.sublayers))
            ratios[full] = 1.0
            return ratios, None
        plan = per_group(layout, group_plan)
        return Plan(groups=plan.groups, forecast_order=c.max_order, forecast_from_step=max(c.first_enhance - 1, 1))
