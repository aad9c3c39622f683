"""`deepcache`: DeepCache (Ma et al., CVPR'24) adapted to isotropic DiTs.

DeepCache is U-Net only; a DiT has no skip branch. On cached steps the first `shallow_blocks` blocks
run fresh and every deeper block adds the residual it produced at the last full step (the residuals
telescope to the deep residual h_out_last − h_out_shallow of that step); the final layer runs with the
current timestep. This adaptation is inferred from the paper's 1.48 T for N=2 on PixArt-α (10 full
steps + one block per cached step), not a documented recipe: DeepCache's official code is U-Net only.
"""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, per_group, check_positive_int
from methods.plan import SKIP_RESIDUAL, Plan
from methods.schedules import interval_steps


class DeepCache(Method):
    name = "deepcache"

    @dataclass(frozen=True)
    class Config:
        """interval: N, full every N steps counted in sampling order from the first (the official code
        tests the position in the scheduler's timesteps, whatever way the sampler's index counts);
        shallow_blocks: blocks computed fresh on cached steps."""

        interval: int = 2
        shallow_blocks: int = 1

        def __post_init__(self):
            check_positive_int("deepcache", "interval", self.interval)
            check_positive_int("deepcache", "shallow_blocks", self.shallow_blocks)

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        shallow = self.config.shallow_blocks
        if shallow >= layout.total_blocks:
            raise ValueError(f"deepcache.shallow_blocks must be < {layout.total_blocks} (the model's depth)")
        return per_group(layout, lambda g, first: shallow_skip(num_steps, g, first, shallow,
                                                               interval_steps(num_steps, self.config.interval)))


def shallow_skip(num_steps: int, group, first: int, shallow: int, full: list[int]):
    """(ratios, skip) of one group when the model's first `shallow` blocks always run and every other
    block adds its cached residual except on the steps `full` (DeepCache; DiCache's meta pattern)."""
    skip = torch.full((num_steps, group.blocks), SKIP_RESIDUAL, dtype=torch.int8)
    skip[:, : max(0, shallow - first)] = 0
    skip[full] = 0
    return torch.ones(num_steps, group.blocks, len(group.sublayers)), skip
