"""`steps`: step reduction. Only the sampler's number of steps changes; every step computes fully."""
from dataclasses import dataclass

from methods.base import Method, check_ratio


class StepReduction(Method):
    name = "steps"

    @dataclass(frozen=True)
    class Config:
        """ratio: fraction of the model's sampling steps to run (0.5 = half), rounded, at least 1."""

        ratio: float = 0.5

        def __post_init__(self):
            check_ratio("steps", "ratio", self.ratio, low_open=True)

    def num_steps(self, base_steps: int) -> int:
        return max(1, round(base_steps * self.config.ratio))
