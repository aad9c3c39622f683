"""`dicache`: DiCache (Bu et al. 2025), "let the diffusion model determine its own cache".

After a retention phase, each step first runs a probe (the first `probe_depth` blocks). The relative
change of the probe output since the previous step is accumulated; while it stays below `threshold`
the rest of the blocks are skipped and the output is the input plus the cached residual, aligned to
the trajectory (γ from the probe residuals). Otherwise the remaining blocks run on from the probe
state, so the probe costs nothing extra. Decisions are per sample (the engine samples one image at a
time for this method). Written from the DiCache paper and our reading of its official FLUX/Wan code; ported to PixArt/DiT with
probe = block 0 (there is no official port).

On the meta device there are no values to decide on, so `plan()` gives the spec's forced pattern for
MAC accounting (`meta_full_steps` full steps, one probe block on the others).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, per_group, check_at_least, check_positive_int, check_ratio
from methods.deepcache import shallow_skip
from methods.plan import Plan


class DiCache(Method):
    name = "dicache"
    dynamic = True

    @dataclass(frozen=True)
    class Config:
        """threshold: accumulated relative probe change below which a step is skipped; ret_ratio: fraction
        of the first steps always computed; probe_depth: blocks in the probe; gamma_max: upper clip of the
        trajectory-alignment factor (1.5 images, 2 Wan); meta_full_steps: full steps of the forced pattern
        used on the meta device."""

        threshold: float = 0.1
        ret_ratio: float = 0.2
        probe_depth: int = 1
        gamma_max: float = 1.5
        meta_full_steps: int = 11

        def __post_init__(self):
            check_ratio("dicache", "ret_ratio", self.ret_ratio)
            check_positive_int("dicache", "probe_depth", self.probe_depth)
            check_positive_int("dicache", "meta_full_steps", self.meta_full_steps)
            check_at_least("dicache", "threshold", self.threshold, 0)
            check_at_least("dicache", "gamma_max", self.gamma_max, 1)

    def retained(self, num_steps: int) -> set[int]:
        return set(range(int(self.config.ret_ratio * num_steps) + 1)) | {num_steps - 1}

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        """The forced pattern (meta device): retention, the last step, then alternate until the budget."""
        full = self.retained(num_steps)
        for s in range(num_steps):
            if len(full) >= self.config.meta_full_steps:
                break
            if s not in full and s - 1 not in full:
                full.add(s)
        return per_group(layout, lambda g, first: shallow_skip(num_steps, g, first, self.config.probe_depth,
                                                               sorted(full)))

    def controller(self, num_steps: int, blocks: int) -> "DiCacheController":
        return DiCacheController(self.config, self.retained(num_steps), blocks)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


class DiCacheController:
    """Block-level decisions of DiCache; the engine calls `run_block` for every block."""

    def __init__(self, config, retained: set[int], blocks: int):
        self.c, self.retained, self.blocks = config, retained, blocks
        self.runs: list[int] = []   # full steps of each finished run (per sample)
        self.reset()

    def reset(self) -> None:
        self.acc, self.skipping, self.full_steps = 0.0, False, 0
        self.x_in = self.probe_out = self.prev_probe = None
        self.residuals: deque = deque(maxlen=2)   # (output − input) of the last two full steps
        self.probe_res: deque = deque(maxlen=2)   # (probe output − input) of the same steps

    def finish(self) -> None:
        self.runs.append(self.full_steps)

    def run_block(self, step: int, block: int, run, x: torch.Tensor):
        """Block `block` (counted over every group) at `step`: `x` its input, `run()` computes it. A block of
        several token streams (FLUX) comes with its streams packed along the tokens, in and out."""
        last_probe = self.c.probe_depth - 1
        if block == 0:
            self.x_in, self.skipping = x, False
        if self.skipping:
            if block < self.blocks - 1:
                return x  # the deep blocks are skipped; the last one adds the aligned residual
            return self.x_in + self._aligned_residual()
        out = run()
        if block == last_probe:
            self.probe_out = out
            if step not in self.retained and self.prev_probe is not None:
                self.acc += _rel(out, self.prev_probe)
                if self.acc < self.c.threshold and self.residuals:
                    self.skipping = True
                else:
                    self.acc = 0.0
            self.prev_probe = out
            if self.skipping:
                return out if block < self.blocks - 1 else self.x_in + self._aligned_residual()
        if block == self.blocks - 1:
            self.full_steps += 1
            self.residuals.append(out - self.x_in)
            self.probe_res.append(self.probe_out - self.x_in)
        return out

    def _aligned_residual(self) -> torch.Tensor:
        if len(self.residuals) < 2:
            return self.residuals[-1]
        r1, r2 = self.residuals
        p1, p2 = self.probe_res
        p = self.probe_out - self.x_in
        gamma = float((p - p1).abs().mean() / (p2 - p1).abs().mean().clamp_min(1e-12))
        gamma = min(max(gamma, 1.0), self.c.gamma_max)
        return r1 + gamma * (r2 - r1)
