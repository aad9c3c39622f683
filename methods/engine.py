"""The one engine: runs any plan on any adapter's pipeline through diffusers hooks.

Hooks sit on each block and on each block's sub-layers (attn1/attn2/ff). At the current step a
sub-layer either
- computes every token (and refreshes its cache),
- computes k tokens chosen by a ranking: they are gathered from its input, run through the sub-layer
  (attention: queries from those tokens, keys and values from the full sequence or the full text),
  and scattered into the cached output; a per-token staleness counter tracks the rest,
- or reuses its cached output (a copy, or a Taylor forecast).
Sub-layer outputs are pre-gate, so the block applies the *current* step's gate to whatever the
sub-layer returns. A block may also be skipped whole (its cached residual is added, or its last output
returned). A hook on the denoiser counts steps.

State is reset explicitly before each pipeline call (`reset()`); caches are freed after the plan's
last step, and a denoiser call past the plan's end is an error, not a silent wrap-around (diffusers'
own hooks leak state between calls on PixArt/DiT, whose pipelines set no cache context).
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from diffusers.hooks import HookRegistry, ModelHook

from methods.plan import COMPUTE, SKIP_OUTPUT, SKIP_RESIDUAL, Plan
from methods.rankings import Ranking, choose

_SUBLAYER_HOOK = "dsbench_sublayer"
_BLOCK_HOOK = "dsbench_block"
_STEP_HOOK = "dsbench_step"


@dataclass
class SublayerState:
    """Cache of one (block, sub-layer): its last output, the inputs it was computed on, staleness."""
    output: torch.Tensor | None = None
    last_input: torch.Tensor | None = None
    staleness: torch.Tensor | None = None     # int (B, N): steps since each token was computed
    taylor: list[torch.Tensor] = field(default_factory=list)   # f, Δf, Δ²f ... at the last full step
    full_step: int | None = None


class _StepHook(ModelHook):
    def __init__(self, engine: "Engine"):
        super().__init__()
        self.engine = engine

    def new_forward(self, module, *args, **kwargs):
        engine, forward = self.engine, self.fn_ref.original_forward
        engine._begin_step()
        if engine.gates is not None and engine._checkpoint and torch.is_grad_enabled():
            out = engine._checkpointed_step(forward, args, kwargs)
        else:
            out = forward(*args, **kwargs)
        engine._end_step()
        return out


class _BlockHook(ModelHook):
    def __init__(self, engine: "Engine", block: int):
        super().__init__()
        self.engine, self.block = engine, block

    def new_forward(self, module, *args, **kwargs):
        return self.engine._run_block(self.block, self.fn_ref.original_forward, args, kwargs)


class _SublayerHook(ModelHook):
    def __init__(self, engine: "Engine", block: int, sublayer: str, kind: str):
        super().__init__()
        self.engine, self.block, self.sublayer, self.kind = engine, block, sublayer, kind

    def new_forward(self, module, *args, **kwargs):
        return self.engine._run_sublayer(self, module, self.fn_ref.original_forward, args, kwargs)


def _split_tokens(args, kwargs):
    """The token tensor a sub-layer is called with, and a function to call it with other tokens."""
    if args:
        return args[0], lambda fwd, x: fwd(x, *args[1:], **kwargs)
    x = kwargs["hidden_states"]
    return x, lambda fwd, x: fwd(**{**kwargs, "hidden_states": x})


def _named(forward, args, kwargs) -> dict:
    """A call's arguments by name, the token tensor first."""
    bound = inspect.signature(forward).bind(*args, **kwargs)
    named = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _branch_copy(controller):
    twin = copy.deepcopy(controller)
    twin.runs = controller.runs  # one record: a run adds one entry per branch
    return twin


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _scatter(into: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return into.scatter(1, idx.unsqueeze(-1).expand(-1, -1, into.shape[-1]), values.to(into.dtype))


class Engine:
    def __init__(self, adapter, pipe, plan: Plan | None, ranking: Ranking | None = None, cfg_halves: int = 1,
                 controller=None, plan_for=None, branches: int = 1):
        """`plan_for(num_steps)`, if given, builds the plan when a pipeline call starts (library use,
        where the number of steps is only known then); a new call is recognised by the scheduler's new
        timesteps tensor. `branches`: denoiser calls per step (Wan's separate CFG: 2); each call of a
        step keeps its own caches and ranking statistics."""
        if plan is None and plan_for is None:
            raise ValueError("an engine needs a plan, or plan_for to build one per pipeline call")
        self.adapter, self.pipe, self.cfg_halves, self.branches = adapter, pipe, cfg_halves, branches
        self.ranking, self.controller, self.plan_for = ranking, controller, plan_for  # controller: a dynamic rule
        # One controller per branch, as each branch decides on its own probe; they share one record of runs.
        self.controllers = [controller] + [_branch_copy(controller) for _ in range(branches - 1)] \
            if controller is not None else []
        if ranking is not None:
            ranking.check_model(set(adapter.sublayer_kinds.values()))
        self.grid = adapter.token_grid()
        self._blocks = list(adapter.blocks(pipe))
        self._modules = [(b, name, adapter.sublayer(block, name))
                         for b, block in enumerate(self._blocks) for name in adapter.sublayers]
        self._timesteps = None
        self.step = -1
        self._calls, self.branch = 0, 0
        self._other_branches: dict[int, tuple] = {}   # branch -> (states, block_cache, ranking stats)
        self.states: dict[tuple[int, str], SublayerState] = {}
        self.block_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # block -> (input, output)
        self.attached = False
        self.gates: torch.Tensor | None = None   # training only, see relax()
        self._block_hooked = torch.full((len(self._blocks),), controller is not None or plan_for is not None)
        if plan is not None:
            self._set_plan(plan)

    def _set_plan(self, plan: Plan) -> None:
        if plan.blocks != len(self._blocks) or plan.sublayers != self.adapter.sublayers:
            raise ValueError(f"plan is for {plan.blocks} blocks × {plan.sublayers}; the model has "
                             f"{len(self._blocks)} blocks × {self.adapter.sublayers}")
        if ((plan.ratios > 0) & (plan.ratios < 1)).any() and self.ranking is None:
            raise ValueError("a plan with partial ratios needs a ranking to choose tokens")
        self.plan = plan
        # Keep caches only where the plan ever reuses: nothing else pays memory for them.
        self._keeps = (plan.ratios < 1).any(dim=0)                          # (blocks, sublayers)
        self._skips = (plan.skip != COMPUTE).any(dim=0) if plan.skip is not None \
            else torch.zeros(plan.blocks, dtype=torch.bool)
        self._keeps |= self._skips.unsqueeze(-1)
        # Python lists for the hot path: a hook call should not pay for tensor indexing.
        self._keeps_list = self._keeps.tolist()
        self._skips_list = self._skips.tolist()
        self._sub_index = {s: i for i, s in enumerate(plan.sublayers)}
        self._ratios_now: list = []
        self._skip_now: list | None = None
        if self.gates is not None:
            self._keeps_list = [[True] * len(plan.sublayers) for _ in range(plan.blocks)]
        if not self.attached:
            self._block_hooked |= self._skips

    def relax(self, gates: torch.Tensor | None, keep: list[float] | None = None, checkpoint: bool = True) -> None:
        """Training mode (DiffSparse's straight-through estimator), or back to inference with None.

        `gates` (steps−1, blocks, sub-layers, S): per item, weights over the S candidates, one-hot in the
        forward pass (the hard choice) and carrying the soft assignment's gradient; candidate u recomputes
        the fraction keep[u] of the tokens. From step 1 every sub-layer then computes all its tokens f(x)
        and returns γ·f(x) + (1 − γ)·cache with γ_j = Σ_u gates[u]·1[token j is in candidate u's top-k]:
        the forward value equals inference under the hard plan, and ∂loss/∂γ exists for every token.
        `checkpoint`: activation checkpointing per sampling step (see _checkpointed_step); the backward
        pass must then run while the engine is attached.
        """
        if gates is not None:
            if keep is None or gates.shape[:3] != (self.plan.steps - 1, self.plan.blocks, len(self.plan.sublayers)) \
                    or gates.shape[3] != len(keep):
                raise ValueError(f"gates must be (steps-1, blocks, sub-layers, len(keep)) = "
                                 f"({self.plan.steps - 1}, {self.plan.blocks}, {len(self.plan.sublayers)}, "
                                 f"{len(keep) if keep else '?'}); got {tuple(gates.shape)}")
            if self.ranking is None:
                raise ValueError("training gates need a ranking to order the tokens")
        self.gates, self._keep, self._checkpoint = gates, keep, checkpoint
        self._set_plan(self.plan)

    # ---- lifecycle ------------------------------------------------------------------------------
    def _registries(self):
        yield self.adapter.denoiser(self.pipe), _StepHook(self), _STEP_HOOK
        for b, block in enumerate(self._blocks):
            if self._block_hooked[b]:
                yield block, _BlockHook(self, b), _BLOCK_HOOK
        for b, name, module in self._modules:
            yield module, _SublayerHook(self, b, name, self.adapter.sublayer_kinds[name]), _SUBLAYER_HOOK

    def attach(self) -> "Engine":
        if not self.attached:
            for module, hook, name in self._registries():
                HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
            self.attached = True
        return self

    def detach(self) -> None:
        if self.attached:
            for module, _, name in self._registries():
                HookRegistry.check_if_exists_or_initialize(module).remove_hook(name, recurse=False)
            self.attached = False
        self.reset()

    def for_samples(self, keys) -> None:
        """Tell the ranking which samples the next pipeline call draws (one key each, e.g. its seed), so
        per-sample random choices do not depend on the batch."""
        if self.ranking is not None:
            self.ranking.sample_keys = [int(k) for k in keys]

    def reset(self) -> None:
        self.step = -1
        self._calls, self.branch = 0, 0
        if self.controllers:
            self.controller = self.controllers[0]
        self._free()

    def _free(self) -> None:
        self.states.clear()
        self.block_cache.clear()
        self._other_branches.clear()
        if self.ranking is not None:
            self.ranking.reset()
        for controller in self.controllers:
            controller.reset()

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()

    # ---- hooks ----------------------------------------------------------------------------------
    def _begin_step(self) -> None:
        if self.plan_for is not None and self.pipe.scheduler.timesteps is not self._timesteps:
            self._timesteps = self.pipe.scheduler.timesteps  # set_timesteps ran: a new pipeline call
            self.reset()
            self._set_plan(self.plan_for(len(self._timesteps)))
        branch = self._calls % self.branches
        self._calls += 1
        if branch != self.branch:
            self._switch_branch(branch)
        if branch:
            return  # the same step's next branch
        self.step += 1
        if self.step < self.plan.steps:
            self._ratios_now = self.plan.ratios[self.step].tolist()
            self._skip_now = self.plan.skip[self.step].tolist() if self.plan.skip is not None else None
        if self.step >= self.plan.steps:
            step = self.step
            self.reset()
            raise RuntimeError(f"the denoiser was called for step {step} but the plan has {self.plan.steps} "
                               "steps: sample with the method's num_steps, and reset() between pipeline calls")

    def _switch_branch(self, branch: int) -> None:
        stats = self.ranking._stats if self.ranking is not None else None
        self._other_branches[self.branch] = (self.states, self.block_cache, stats)
        self.states, self.block_cache, stats = self._other_branches.pop(branch, ({}, {}, {}))
        if self.ranking is not None:
            self.ranking._stats = stats
        if self.controllers:
            self.controller = self.controllers[branch]
        self.branch = branch

    def _end_step(self) -> None:
        if self.step == self.plan.steps - 1 and self.branch == self.branches - 1:
            for controller in self.controllers:
                controller.finish()
            self._free()  # the run is over: free every cached tensor

    def _run_block(self, block: int, forward, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if self.controller is not None:
            return self.controller.run_block(self.step, block, forward, x, args, kwargs)
        mode = self._skip_now[block] if self._skip_now is not None else COMPUTE
        if mode == SKIP_RESIDUAL:
            inp, out = self.block_cache[block]
            return x + (out - inp)
        if mode == SKIP_OUTPUT:
            return self.block_cache[block][1]
        out = forward(*args, **kwargs)
        if self._skips_list[block]:
            self.block_cache[block] = (x, out)
        return out

    def _run_sublayer(self, hook: _SublayerHook, module, forward, args, kwargs):
        block, sub, kind = hook.block, hook.sublayer, hook.kind
        i = self._sub_index[sub]
        if self.gates is not None and self.step > 0:
            return self._run_gated(block, sub, kind, i, module, forward, args, kwargs)
        ratio, keeps = self._ratios_now[block][i], self._keeps_list[block][i]
        x, call = _split_tokens(args, kwargs)
        state = self.states.setdefault((block, sub), SublayerState()) if keeps else None
        if ratio >= 1:
            out = self._observed(module, kind, block, None, kwargs, lambda: call(forward, x))
            if keeps:
                self._store_full(state, x, out)
            return out
        k = int(ratio * x.shape[1])
        if k == 0:
            if state.staleness is not None:  # as the official code: every token ages, none is computed
                state.staleness = state.staleness + 1
            return self._reuse(state)
        # Token path: compute k chosen tokens, reuse the rest.
        idx = self._choose(block, sub, x, state, k)
        if kind == "self_attn":  # keys/values from every token
            if len(args) > 1:  # Wan passes attn1's arguments positionally: name them so they can be replaced
                named = _named(forward, args, kwargs)
                named.pop(next(iter(named)))
            else:  # the common case, without the cost of binding a signature on every call
                named = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            named.update(self.adapter.subset_attention_kwargs(x, idx, named))
            run = lambda: forward(_gather(x, idx), **named)  # noqa: E731
        else:
            run = lambda: call(forward, _gather(x, idx))  # noqa: E731
        fresh = self._observed(module, kind, block, idx, kwargs, run)
        state.output = _scatter(state.output, idx, fresh)
        state.staleness = (state.staleness + 1).scatter(1, idx, 0)
        if state.last_input is not None:
            state.last_input = _scatter(state.last_input, idx, _gather(x, idx))
        return state.output

    def _run_gated(self, block, sub, kind, i, module, forward, args, kwargs):
        """Training path of relax(): every token computed, mixed with the cache by the gate γ."""
        gate = self.gates[self.step - 1, block, i]                       # (S,)
        x, call = _split_tokens(args, kwargs)
        state = self.states[(block, sub)]
        N = x.shape[1]
        counts = [N if f >= 1 else int(f * N) for f in self._keep]
        k = counts[int(gate.detach().argmax())]                          # the hard choice's token count
        scores = self._scores(block, sub, x, state)
        pick = lambda c: choose(scores, c, self.cfg_halves, self.ranking.cfg_choice)  # noqa: E731
        masks = []
        for c in counts:
            m = torch.zeros(scores.shape, dtype=x.dtype, device=x.device)
            masks.append(m.fill_(1.0) if c >= N else m.scatter_(1, pick(c), 1.0) if c else m)
        idx = pick(k) if 0 < k < N else None
        run = lambda: call(forward, x)  # noqa: E731
        # As inference: the ranking observes the tokens the hard choice computes (none when k = 0).
        fresh = run() if k == 0 else self._observed(module, kind, block, idx, kwargs, run)
        gamma = torch.einsum("s,sbn->bn", gate.to(x.dtype), torch.stack(masks)).unsqueeze(-1)
        out = gamma * fresh + (1 - gamma) * state.output
        if k == N:
            state.staleness = torch.zeros_like(state.staleness)
            if state.last_input is not None:
                state.last_input = x
        elif k:
            state.staleness = (state.staleness + 1).scatter(1, idx, 0)
            if state.last_input is not None:
                state.last_input = _scatter(state.last_input, idx, _gather(x, idx))
        else:
            state.staleness = state.staleness + 1
        state.output = out
        return out

    def _scores(self, block, sub, x, state) -> torch.Tensor:
        return self.ranking.scores(block=block, sublayer=sub, step=self.step, tokens=x, last_input=state.last_input,
                                   staleness=state.staleness, grid=self.grid, cfg_halves=self.cfg_halves)

    def _choose(self, block, sub, x, state, k: int) -> torch.Tensor:
        return choose(self._scores(block, sub, x, state), k, self.cfg_halves, self.ranking.cfg_choice)

    def _snapshot(self) -> tuple:
        """What a step reads from the engine: step, gates, caches, ranking statistics. Cheap: every update
        makes new tensors, so references suffice."""
        states = {k: SublayerState(v.output, v.last_input, v.staleness, list(v.taylor), v.full_step)
                  for k, v in self.states.items()}
        stats = dict(self.ranking._stats) if self.ranking is not None else None
        return (self.step, self.gates, self._keep, self._keeps_list, self._ratios_now, self._skip_now, states,
                stats, dict(self.block_cache))

    def _restore(self, snap: tuple) -> None:
        (self.step, self.gates, self._keep, self._keeps_list, self._ratios_now, self._skip_now, states, stats,
         blocks) = snap
        self.states = {k: SublayerState(v.output, v.last_input, v.staleness, list(v.taylor), v.full_step)
                       for k, v in states.items()}
        if stats is not None:
            self.ranking._stats = dict(stats)
        self.block_cache = dict(blocks)

    def _checkpointed_step(self, forward, args, kwargs):
        """One denoiser call under torch.utils.checkpoint (non-reentrant): autograd keeps none of the
        step's internals, and the backward pass re-runs the step from the engine state it started from
        (restored from a snapshot, then put back). Memory across the unrolled sampler is then the
        latents and the caches each step hands to the next, not every activation of every step."""
        before, calls = self._snapshot(), [0]

        def run():
            calls[0] += 1
            if calls[0] == 1:
                return forward(*args, **kwargs)
            if not self.attached:
                raise RuntimeError("a checkpointed training step is recomputed in the backward pass through the "
                                   "engine's hooks: call backward() while the engine is attached")
            now = self._snapshot()
            self._restore(before)
            try:
                return forward(*args, **kwargs)
            finally:
                self._restore(now)
        return torch.utils.checkpoint.checkpoint(run, use_reentrant=False)

    def _store_full(self, state: SublayerState, x, out) -> None:
        state.output = out
        state.staleness = torch.zeros(out.shape[:2], dtype=torch.int32, device=out.device)
        if self.ranking is not None and self.ranking.score == "similarity":
            state.last_input = x
        if self.plan.forecast_order:
            self._update_taylor(state, out)

    def _update_taylor(self, state: SublayerState, out) -> None:
        """TaylorSeer's divided differences between consecutive full steps: Δⁱ⁺¹ = (Δⁱ_now − Δⁱ_before) / d,
        d the steps between them (its official code's recursion, not the paper's Δⁱ/Nⁱ)."""
        new = [out]
        if state.full_step is not None and self.step >= self.plan.forecast_from_step:
            d = self.step - state.full_step
            for i in range(min(len(state.taylor), self.plan.forecast_order)):
                new.append((new[i] - state.taylor[i]) / d)
        state.taylor, state.full_step = new, self.step

    def _reuse(self, state: SublayerState):
        if not self.plan.forecast_order or len(state.taylor) < 2:
            return state.output
        k = self.step - state.full_step
        return sum(d * (k ** i / math.factorial(i)) for i, d in enumerate(state.taylor))

    def _observed(self, module, kind, block, idx, kwargs, run):
        """Run the sub-layer, capturing q/k/v for the ranking when it needs them."""
        want_qk, want_v = self.ranking.wants(kind) if self.ranking is not None else (False, False)
        if not (want_qk or want_v):
            return run()
        seen, handles = {}, []
        for name, wanted in (("to_q", want_qk), ("to_k", want_qk), ("to_v", want_v)):
            if wanted:
                handles.append(getattr(module, name).register_forward_hook(
                    lambda m, a, o, name=name: seen.__setitem__(name, o)))
        try:
            out = run()
        finally:
            for h in handles:
                h.remove()
        mask = kwargs.get("attention_mask") if kind == "cross_attn" else None
        q = seen.get("to_q")
        if idx is not None and q is not None and q.shape[1] != idx.shape[1]:
            q = _gather(q, idx)  # training computes every token; the ranking sees only the chosen ones
        self.ranking.observe(block, kind, q, seen.get("to_k"), seen.get("to_v"), mask, module.heads, idx)
        return out
