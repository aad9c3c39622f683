"""SparseDiT's temporal density: how many sparse tokens an SDTM keeps at each diffusion timestep.

Timesteps are DiT's training index t ∈ [0, T] (T = 1000): t = 0 is clean data, t = T pure noise. The
pruning rate r is r_min over the last quarter of denoising (t < T/4, where detail is formed and tokens
matter most) and rises linearly to r_max at t = T:

    r(t) = r_min                                                for t < T/4
    r(t) = (r_min·(4T − 4t) + r_max·(4t − T)) / (3T)            for T/4 ≤ t ≤ T

An SDTM keeps M = (1 − r)·N of the N dense tokens as a square g×g grid, g = round(√((1 − r)·N)) (halves
round up) clamped to [1, grid side]. E.g. N = 256 with r ∈ [0.61, 0.86] gives g = 10 near the data and 6
at pure noise.

Training needs one g per batch while t stays uniform, so `intervals = K` makes r piecewise constant:
[0, T) is cut into K equal intervals, each using r(t) at its midpoint (K a multiple of 4 keeps [0, T/4)
at r_min), and `sample` draws a batch's timesteps from one interval. `fixed_grid` ignores t altogether.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TemporalDensity:
    r_min: float = 0.61
    r_max: float = 0.86
    intervals: int | None = None     # K: piecewise-constant r (training); None: the continuous r(t)
    fixed_grid: int | None = None    # one g at every timestep (r_min, r_max unused)
    num_timesteps: int = 1000        # T

    def __post_init__(self):
        if not 0 <= self.r_min <= self.r_max < 1:
            raise ValueError(f"pruning rates need 0 <= r_min <= r_max < 1, got [{self.r_min}, {self.r_max}]")
        if not (isinstance(self.num_timesteps, int) and self.num_timesteps >= 1):
            raise ValueError(f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}")
        if self.intervals is not None and not (isinstance(self.intervals, int) and self.intervals >= 1):
            raise ValueError(f"density intervals must be an integer >= 1 (or None), got {self.intervals!r}")
        if self.intervals is not None and self.intervals > self.num_timesteps:
            raise ValueError(f"{self.intervals} density intervals exceed the {self.num_timesteps} timesteps")
        if self.fixed_grid is not None and not (isinstance(self.fixed_grid, int) and self.fixed_grid >= 1):
            raise ValueError(f"a fixed sparse grid must be an integer >= 1 (or None), got {self.fixed_grid!r}")
        if self.fixed_grid is not None and self.intervals is not None:
            raise ValueError("a fixed sparse grid and density intervals exclude each other; set one")

    def _check_t(self, t: float) -> float:
        t = float(t)
        if not 0 <= t <= self.num_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_timesteps}]")
        return t

    def continuous_rate(self, t: float) -> float:
        """r(t) of the formula above."""
        t, T = self._check_t(t), self.num_timesteps
        if t < T / 4:
            return self.r_min
        return (self.r_min * (4 * T - 4 * t) + self.r_max * (4 * t - T)) / (3 * T)

    def interval(self, t: float) -> int:
        """The piecewise schedule's interval k holding t (t = T falls in the last one)."""
        if self.intervals is None:
            raise ValueError("this density is continuous: set intervals to use the piecewise schedule")
        t = self._check_t(t)
        return min(int(t * self.intervals // self.num_timesteps), self.intervals - 1)

    def bounds(self, k: int) -> tuple[int, int]:
        """The integer timesteps [lo, hi) of interval k: those t with floor(t·K/T) = k."""
        K, T = self.intervals, self.num_timesteps
        if K is None or not 0 <= k < K:
            raise ValueError(f"interval {k!r} is not one of the {K} density intervals")
        return -(-k * T // K), -(-(k + 1) * T // K)

    def rate(self, t: float) -> float:
        """The pruning rate at t: r(t), or r at the midpoint of t's interval when piecewise."""
        if self.intervals is None:
            return self.continuous_rate(t)
        k = self.interval(t)
        return self.continuous_rate((k + 0.5) * self.num_timesteps / self.intervals)

    def grid(self, t: float, grid_hw: tuple[int, int]) -> int:
        """g at timestep t for a dense grid of grid_hw = (rows, cols) tokens."""
        side = min(grid_hw)
        if self.fixed_grid is not None:
            if self.fixed_grid > side:
                raise ValueError(f"fixed sparse grid {self.fixed_grid} exceeds the "
                                 f"{grid_hw[0]}×{grid_hw[1]} token grid")
            return self.fixed_grid
        return sparse_side(self.rate(t), grid_hw[0] * grid_hw[1], side)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps (batch,) int64 from one interval, so the batch shares one g; each row's t is
        uniform on {0, …, T−1}: the interval is picked with probability ∝ its width (that of a uniform t),
        then every row is drawn uniformly inside it."""
        if self.intervals is None:
            raise ValueError("sampling a shared-grid batch needs the piecewise schedule: set intervals")
        first = int(torch.randint(0, self.num_timesteps, (), generator=generator))
        lo, hi = self.bounds(self.interval(first))
        return torch.randint(lo, hi, (batch,), generator=generator)


def sparse_side(rate: float, tokens: int, side: int) -> int:
    """g = round(√((1 − rate)·tokens)), halves up, clamped to [1, side]."""
    return min(max(math.floor(math.sqrt((1 - rate) * tokens) + 0.5), 1), side)
