"""The one engine: runs any plan on any adapter's pipeline through diffusers hooks.

A hook on each (block, sub-layer) decides, at the current step, whether to compute the sub-layer or to
reuse its cached output. The hooks sit on the sub-layers (attn1/attn2/ff), whose outputs are pre-gate:
the block still applies the *current* step's gate to a reused output, which is what the token-cache
methods prescribe. A hook on the denoiser counts steps. Nothing may leak into the next pipeline call (diffusers'
own hooks leak state between calls on PixArt/DiT, see shared/reference/diffusers-internals.md §5).
State is reset explicitly before each pipeline call (`reset()`); the cache is also freed after the
plan's last step. A denoiser call past the plan's end is an error rather than a silent wrap-around.
"""
from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

from methods.plan import Plan

_SUBLAYER_HOOK = "dsbench_sublayer"
_STEP_HOOK = "dsbench_step"


class _StepHook(ModelHook):
    def __init__(self, engine: "Engine"):
        super().__init__()
        self.engine = engine

    def pre_forward(self, module, *args, **kwargs):
        self.engine._begin_step()
        return args, kwargs

    def post_forward(self, module, output):
        self.engine._end_step()
        return output


class _SublayerHook(ModelHook):
    def __init__(self, engine: "Engine", block: int, sublayer: str):
        super().__init__()
        self.engine, self.block, self.sublayer = engine, block, sublayer

    def new_forward(self, module, *args, **kwargs):
        return self.engine._run_sublayer(self.block, self.sublayer, self.fn_ref.original_forward, args, kwargs)


class Engine:
    def __init__(self, adapter, pipe, plan: Plan):
        blocks = adapter.blocks(pipe)
        if plan.blocks != len(blocks) or plan.sublayers != adapter.sublayers:
            raise ValueError(f"plan is for {plan.blocks} blocks × {plan.sublayers}; the model has "
                             f"{len(blocks)} blocks × {adapter.sublayers}")
        self.adapter, self.pipe, self.plan = adapter, pipe, plan
        self._modules = [(b, name, adapter.sublayer(block, name))
                         for b, block in enumerate(blocks) for name in adapter.sublayers]
        # Keep a cache only where the plan ever reuses: nothing else pays memory for it.
        reused = (plan.ratios < 1).any(dim=0)  # (blocks, sublayers)
        self._keeps_cache = {(b, s): bool(reused[b, i]) for b in range(plan.blocks)
                             for i, s in enumerate(plan.sublayers)}
        self.step = -1
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        self.attached = False

    # ---- lifecycle ------------------------------------------------------------------------------
    def attach(self) -> "Engine":
        if self.attached:
            return self
        HookRegistry.check_if_exists_or_initialize(self.adapter.denoiser(self.pipe)).register_hook(
            _StepHook(self), _STEP_HOOK)
        for b, name, module in self._modules:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                _SublayerHook(self, b, name), _SUBLAYER_HOOK)
        self.attached = True
        return self

    def detach(self) -> None:
        if not self.attached:
            return
        HookRegistry.check_if_exists_or_initialize(self.adapter.denoiser(self.pipe)).remove_hook(
            _STEP_HOOK, recurse=False)
        for _, _, module in self._modules:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(_SUBLAYER_HOOK, recurse=False)
        self.attached = False
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.cache.clear()

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()

    # ---- hooks ----------------------------------------------------------------------------------
    def _begin_step(self) -> None:
        self.step += 1
        if self.step >= self.plan.steps:
            step = self.step
            self.reset()
            raise RuntimeError(f"the denoiser was called for step {step} but the plan has {self.plan.steps} "
                               "steps: sample with the method's num_steps, and reset() between pipeline calls")

    def _end_step(self) -> None:
        if self.step == self.plan.steps - 1:
            self.cache.clear()  # the run is over: free every cached tensor

    def _run_sublayer(self, block: int, sublayer: str, forward, args, kwargs):
        ratio = self.plan.ratio(self.step, block, sublayer)
        key = (block, sublayer)
        if ratio >= 1:
            out = forward(*args, **kwargs)
            if self._keeps_cache[key]:
                self.cache[key] = out
            return out
        if ratio <= 0:
            return self.cache[key]  # Plan guarantees step 0 computes, so the cache exists
        raise NotImplementedError(
            f"partial ratio {ratio} at step {self.step}, block {block}, {sublayer}: the token path "
            "(compute k chosen tokens, reuse the rest) is not implemented yet")
