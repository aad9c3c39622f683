"""The one engine: runs any plan on any adapter's pipeline through diffusers hooks.

The model's block groups (models/base.py `BlockGroup`) say where the blocks are, which sub-layers they
have and which call arguments and return slots carry which token stream; the engine reads nothing else
of a model, so PixArt, DiT, Wan and FLUX run through the same code. Hooks sit on the denoiser (it counts
steps), on each block and on each block's sub-layers. At the current step a sub-layer either
- computes every token (and refreshes its cache),
- computes k = int(r·N) tokens of each of its streams, chosen by a ranking: token-wise sub-layers run on
  those rows of their inputs; attention takes its queries from them and its keys and values from every
  token (the adapter says how, `subset_attention_kwargs`); the result is scattered into the cached
  output and a per-token staleness counter tracks the rest,
- or reuses its cached output (a copy, or a Taylor forecast: methods/forecast.py).
Sub-layer outputs are pre-gate, so the block applies the *current* step's gate to whatever the
sub-layer returns. A block may also be skipped whole (its cached residual added per stream, or its last
output returned), or handed to a run-time controller (DiCache). Training (DiffSparse's gated path) lives
in methods/training.py; the engine calls it when `relax()` has set gates.

State is reset explicitly before each pipeline call (`reset()`); caches are freed after the plan's
last step, and a denoiser call past the plan's end is an error, not a silent wrap-around (diffusers'
own hooks leak state between calls on PixArt/DiT, whose pipelines set no cache context).
"""
from __future__ import annotations

import copy

import torch
from diffusers.hooks import HookRegistry, ModelHook

from methods import observe
from methods.calls import ArgMap, as_tuple, from_tuple, gather, scatter
from methods.forecast import SublayerState, reused, update_taylor
from methods.plan import COMPUTE, SKIP_OUTPUT, SKIP_RESIDUAL, Plan
from methods.rankings import Ranking, check_grid, choose

_SUBLAYER_HOOK = "dsbench_sublayer"
_BLOCK_HOOK = "dsbench_block"
_STEP_HOOK = "dsbench_step"


class _StepHook(ModelHook):
    def __init__(self, engine: "Engine"):
        super().__init__()
        self.engine = engine

    def new_forward(self, module, *args, **kwargs):
        engine, forward = self.engine, self.fn_ref.original_forward
        engine._begin_step(args, kwargs)
        if engine.training is not None and engine.training.checkpoint and torch.is_grad_enabled():
            out = engine.training.checkpointed_step(forward, args, kwargs)
        else:
            out = forward(*args, **kwargs)
        engine._end_step()
        return out


class _BlockHook(ModelHook):
    def __init__(self, engine: "Engine", site: "_Block"):
        super().__init__()
        self.engine, self.site = engine, site

    def new_forward(self, module, *args, **kwargs):
        return self.engine._run_block(self.site, self.fn_ref.original_forward, args, kwargs)


class _SublayerHook(ModelHook):
    def __init__(self, engine: "Engine", site: "_Sub"):
        super().__init__()
        self.engine, self.site = engine, site

    def new_forward(self, module, *args, **kwargs):
        return self.engine._run_sublayer(self.site, module, self.fn_ref.original_forward, args, kwargs)


class _Block:
    """One block: its group (index and description), index in the group and in the model, call map."""

    def __init__(self, g: int, group, b: int, flat: int, module):
        self.g, self.group, self.b, self.flat, self.module = g, group, b, flat, module
        self.args = ArgMap(module.forward)
        self.out_order = [group.streams.index(s) for s in group.returns]   # return slot -> stream index


class _Sub:
    """One sub-layer of one block: where it is, its description, and its call map."""

    def __init__(self, block: _Block, i: int, spec, module, keys: list[str]):
        self.block, self.g, self.b, self.i, self.spec, self.module = block, block.g, block.b, i, spec, module
        self.kind, self.n = spec.kind, len(spec.streams)
        self.args = ArgMap(module.forward)
        self.keys = keys   # per stream: the name of its random draws (stable across versions for one group)


def _branch_copy(controller):
    twin = copy.deepcopy(controller)
    twin.runs = controller.runs  # one record: a run adds one entry per branch
    return twin


class Engine:
    def __init__(self, adapter, pipe, plan: Plan | None, ranking: Ranking | None = None, cfg_halves: int = 1,
                 controller=None, plan_for=None, branches: int = 1):
        """`plan_for(num_steps)`, if given, builds the plan when a pipeline call starts (library use,
        where the number of steps is only known then); a new call is recognised by the scheduler's new
        timesteps tensor. `branches`: denoiser calls per step (Wan's separate CFG: 2); each call of a
        step keeps its own caches and ranking statistics. `controller`: a run-time rule deciding per
        block (methods/dicache.py's interface: reset(), finish(), run_block(step, block, run, x))."""
        if plan is None and plan_for is None:
            raise ValueError("an engine needs a plan, or plan_for to build one per pipeline call")
        self.adapter, self.pipe, self.cfg_halves, self.branches = adapter, pipe, cfg_halves, branches
        self.ranking, self.controller, self.plan_for = ranking, controller, plan_for
        # One controller per branch, as each branch decides on its own probe; they share one record of runs.
        self.controllers = [controller] + [_branch_copy(controller) for _ in range(branches - 1)] \
            if controller is not None else []
        self._groups = list(adapter.groups)
        self._grid = None   # the image grid of the current call where it is not the preset's (library use)
        if ranking is not None:
            ranking.check_model({k for g in self._groups for k in g.kinds})
            if plan_for is None:  # library use: checked per call, on the call's own grid
                self._check_grid()
        self._block_sites: list[list[_Block]] = []
        self._sub_sites: list[_Sub] = []
        one = len(self._groups) == 1
        flat = 0
        for g, group in enumerate(self._groups):
            sites = []
            for b, module in enumerate(adapter.group_blocks(pipe, group)):
                site = _Block(g, group, b, flat, module)
                sites.append(site)
                flat += 1
                for i, spec in enumerate(group.sublayers):
                    keys = [f"{b}:{spec.name}" if one and stream == "image" else f"{group.name}:{b}:{spec.name}:{stream}"
                            for stream in spec.streams]
                    self._sub_sites.append(_Sub(site, i, spec, adapter.sublayer(module, spec.name), keys))
            self._block_sites.append(sites)
        self._timesteps = None
        self.step = -1
        self._calls, self.branch = 0, 0
        self._other_branches: dict[int, tuple] = {}   # branch -> (states, block_cache, ranking state)
        self.states: dict[tuple, SublayerState] = {}    # (g, b, i, stream index) -> cache
        self.block_cache: dict[tuple[int, int], tuple[tuple, tuple]] = {}   # (g, b) -> (inputs, outputs) per stream
        self.attached = False
        self.training = None   # methods.training.GatedTraining while relax() has set gates
        self._hook_blocks = [[controller is not None or plan_for is not None] * len(s) for s in self._block_sites]
        if plan is not None:
            self._set_plan(plan)

    def _check_grid(self) -> None:
        """Refuse a spatial bonus that cannot tile a stream's grid, before any token is chosen."""
        r = self.ranking
        if r is None or not (r.bonus and r.grid):
            return
        for spec in (s for g in self._groups for s in g.sublayers):
            for stream in spec.streams:
                if (grid := self.adapter.stream_grid(stream, self._grid)) is not None:
                    check_grid(grid, r.grid)

    # ---- the plan ---------------------------------------------------------------------------------
    def _set_plan(self, plan: Plan) -> None:
        have = [(len(sites), g.sublayer_names) for g, sites in zip(self._groups, self._block_sites)]
        want = [(p.blocks, p.sublayers) for p in plan.groups]
        if have != want:
            raise ValueError(f"plan is for {_describe(want)}; the model has {_describe(have)}")
        if any(((p.ratios > 0) & (p.ratios < 1)).any() for p in plan.groups) and self.ranking is None:
            raise ValueError("a plan with partial ratios needs a ranking to choose tokens")
        self.plan = plan
        # Keep caches only where the plan ever reuses: nothing else pays memory for them. Python lists
        # for the hot path: a hook call should not pay for tensor indexing.
        self._keeps, self._skips = [], []
        for p in plan.groups:
            skips = (p.skip != COMPUTE).any(dim=0) if p.skip is not None else torch.zeros(p.blocks, dtype=torch.bool)
            keeps = (p.ratios < 1).any(dim=0) | skips.unsqueeze(-1)
            if self.training is not None:
                keeps = torch.ones_like(keeps)
            self._keeps.append(keeps.tolist())
            self._skips.append(skips.tolist())
        # Full calls whose statistic nothing reads run without capturing (none in training or under a
        # controller: every step observes, or no plan is fixed).
        fixed = self.ranking is not None and self.training is None and self.controller is None
        self._unread = observe.unread_observations(self.ranking, self._groups, plan) if fixed else frozenset()
        self._ratios_now: list = []
        self._skip_now: list = []
        if not self.attached:
            self._hook_blocks = [[h or s for h, s in zip(hooked, skips)]
                                 for hooked, skips in zip(self._hook_blocks, self._skips)]

    def relax(self, gates, keep: list[float] | None = None, checkpoint: bool = True) -> None:
        """Training mode (DiffSparse's straight-through estimator), or back to inference with None;
        see methods/training.py. `gates`: one tensor (steps−1, blocks, sub-layers, S) per group (a
        tensor alone for one group)."""
        from methods.training import GatedTraining

        self.training = None if gates is None else GatedTraining(self, gates, keep, checkpoint)
        self._set_plan(self.plan)

    # ---- lifecycle ------------------------------------------------------------------------------
    def _registries(self):
        yield self.adapter.denoiser(self.pipe), _StepHook(self), _STEP_HOOK
        for sites, hooked in zip(self._block_sites, self._hook_blocks):
            for site, on in zip(sites, hooked):
                if on:
                    yield site.module, _BlockHook(self, site), _BLOCK_HOOK
        for site in self._sub_sites:
            yield site.module, _SublayerHook(self, site), _SUBLAYER_HOOK

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

    @property
    def per_image(self) -> bool:
        """A run-time controller decides per sample: the cell samples one image per call."""
        return self.controller is not None

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

    # ---- steps and branches -----------------------------------------------------------------------
    def _begin_step(self, args=(), kwargs=None) -> None:
        if self.plan_for is not None and self.pipe.scheduler.timesteps is not self._timesteps:
            self._timesteps = self.pipe.scheduler.timesteps  # set_timesteps ran: a new pipeline call
            self.reset()
            self._set_plan(self.plan_for(len(self._timesteps)))
            self._grid = self.adapter.grid_from_call(args, kwargs or {})  # library use: any image size
            self._check_grid()
        branch = self._calls % self.branches
        self._calls += 1
        if branch != self.branch:
            self._switch_branch(branch)
        if branch:
            return  # the same step's next branch
        self.step += 1
        if self.step >= self.plan.steps:
            step = self.step
            self.reset()
            raise RuntimeError(f"the denoiser was called for step {step} but the plan has {self.plan.steps} "
                               "steps: sample with the method's num_steps, and reset() between pipeline calls")
        self._ratios_now = [p.ratios[self.step].tolist() for p in self.plan.groups]
        self._skip_now = [p.skip[self.step].tolist() if p.skip is not None else None for p in self.plan.groups]

    def _switch_branch(self, branch: int) -> None:
        ranked = self.ranking.state() if self.ranking is not None else None
        self._other_branches[self.branch] = (self.states, self.block_cache, ranked)
        self.states, self.block_cache, ranked = self._other_branches.pop(branch, ({}, {}, {}))
        if self.ranking is not None:
            self.ranking.load_state(ranked)
        if self.controllers:
            self.controller = self.controllers[branch]
        self.branch = branch

    def _end_step(self) -> None:
        if self.step == self.plan.steps - 1 and self.branch == self.branches - 1:
            for controller in self.controllers:
                controller.finish()
            self._free()  # the run is over: free every cached tensor

    # ---- blocks -----------------------------------------------------------------------------------
    def _run_block(self, site: _Block, forward, args, kwargs):
        group = site.group
        xs = tuple(site.args.get(args, kwargs, a) for a in group.args)
        if self.controller is not None:  # the controller sees the block's streams packed along the tokens
            run = lambda: _pack(_outputs(site, forward(*args, **kwargs)))  # noqa: E731
            return _returns(site, _unpack(self.controller.run_block(self.step, site.flat, run, _pack(xs)), xs))
        skip = self._skip_now[site.g]
        mode = skip[site.b] if skip is not None else COMPUTE
        if mode == SKIP_RESIDUAL:
            inp, out = self.block_cache[(site.g, site.b)]
            return _returns(site, tuple(x + (o - i) for x, i, o in zip(xs, inp, out)))
        if mode == SKIP_OUTPUT:
            return _returns(site, self.block_cache[(site.g, site.b)][1])
        out = forward(*args, **kwargs)
        if self._skips[site.g][site.b]:
            self.block_cache[(site.g, site.b)] = (xs, _outputs(site, out))
        return out

    # ---- sub-layers -------------------------------------------------------------------------------
    def _run_sublayer(self, site: _Sub, module, forward, args, kwargs):
        if self.training is not None and self.step > 0:
            return self.training.run(site, module, forward, args, kwargs)
        g, b, i = site.g, site.b, site.i
        ratio, keeps = self._ratios_now[g][b][i], self._keeps[g][b][i]
        spec = site.spec
        xs = [site.args.get(args, kwargs, a) for a in spec.args]
        states = [self.states.setdefault((g, b, i, s), SublayerState()) for s in range(site.n)] if keeps else None
        if ratio >= 1:
            if (self.step, g, b, i) in self._unread:
                out = forward(*args, **kwargs)
            else:
                out = self.observed(site, module, None, args, kwargs, lambda: forward(*args, **kwargs))
            if keeps:
                for state, x, o in zip(states, xs, as_tuple(out, site.n)):
                    self.store_full(state, x, o)
            return out
        ks = [int(ratio * x.shape[1]) for x in xs]
        if not any(ks):
            for state in states:  # as the official code: every token ages, none is computed
                if state.staleness is not None:
                    state.staleness = state.staleness + 1
            return from_tuple([reused(st, self.step, self.plan.forecast_order) for st in states], site.n)
        # Token path: compute k chosen tokens of each stream, reuse the rest.
        picks = {spec.streams[s]: self.choose(site, s, xs[s], states[s], ks[s]) for s in range(site.n)}
        idxs = list(picks.values())
        if site.kind == "self_attn":  # queries from the chosen tokens, keys and values from every token
            named = site.args.named(args, kwargs)
            named.update(self.adapter.subset_attention_kwargs(spec, named, picks))
            run = lambda: forward(**named)  # noqa: E731
        else:  # token-wise: the chosen rows of every per-token argument
            rows = {spec.args[0]: gather(xs[0], idxs[0])}
            rows.update({a: gather(site.args.get(args, kwargs, a), idxs[0]) for a in spec.aligned})
            new_args, new_kwargs = site.args.replace(args, kwargs, rows)
            run = lambda: forward(*new_args, **new_kwargs)  # noqa: E731
        fresh = as_tuple(self.observed(site, module, idxs, args, kwargs, run), site.n)
        outs = []
        for state, x, idx, f in zip(states, xs, idxs, fresh):
            state.output = scatter(state.output, idx, f)
            state.staleness = (state.staleness + 1).scatter(1, idx, 0)
            if state.last_input is not None:
                state.last_input = scatter(state.last_input, idx, gather(x, idx))
            outs.append(state.output)
        return from_tuple(outs, site.n)

    def scores(self, site: _Sub, s: int, x, state) -> torch.Tensor:
        stream = site.spec.streams[s]
        return self.ranking.scores(where=(site.g, site.b), stream=stream, step=self.step, tokens=x,
                                   last_input=state.last_input, staleness=state.staleness,
                                   grid=self.adapter.stream_grid(stream, self._grid), cfg_halves=self.cfg_halves,
                                   key=f"{self.step}:{site.keys[s]}")

    def choose(self, site: _Sub, s: int, x, state, k: int) -> torch.Tensor:
        return choose(self.scores(site, s, x, state), k, self.cfg_halves, self.ranking.cfg_choice)

    def store_full(self, state: SublayerState, x, out) -> None:
        state.output = out
        state.staleness = torch.zeros(out.shape[:2], dtype=torch.int32, device=out.device)
        if self.ranking is not None and self.ranking.keeps_inputs:
            state.last_input = x
        if self.plan.forecast_order:
            update_taylor(state, out, self.step, self.plan.forecast_order, self.plan.forecast_from_step)

    def observed(self, site: _Sub, module, idxs, args, kwargs, run):
        """Run the sub-layer, capturing what the ranking needs (methods/observe.py)."""
        if self.ranking is None:
            return run()
        return observe.run_observed(self.ranking, self.adapter, site, module, idxs, args, kwargs, run)


def _describe(shape: list) -> str:
    return " + ".join(f"{blocks} blocks × {tuple(subs)}" for blocks, subs in shape)


def _outputs(site: _Block, out) -> tuple:
    """A block's return value as one tensor per stream, in the group's stream order."""
    slots = as_tuple(out, len(site.group.returns))
    values = [None] * len(slots)
    for slot, s in enumerate(site.out_order):
        values[s] = slots[slot]
    return tuple(values)


def _returns(site: _Block, values: tuple):
    """One tensor per stream back into the block's return structure."""
    return from_tuple([values[s] for s in site.out_order], len(site.out_order))


def _pack(values: tuple) -> torch.Tensor:
    return values[0] if len(values) == 1 else torch.cat(values, dim=1)


def _unpack(x: torch.Tensor, like: tuple) -> tuple:
    if len(like) == 1:
        return (x,)
    return tuple(x.split([t.shape[1] for t in like], dim=1))
