"""DiffSparse's training path through the engine: gated sub-layers and checkpointed sampling steps.

`Engine.relax(gates, keep)` puts the engine in this mode. Per item (step, group, block, sub-layer),
gates[u] weighs the S candidates, one-hot in the forward pass (the hard choice) and carrying the soft
assignment's gradient; candidate u recomputes the fraction keep[u] of the tokens. From step 1 every
sub-layer then computes all its tokens f(x) and returns γ·f(x) + (1 − γ)·cache per stream, with
γ_j = Σ_u gates[u]·1[token j is in candidate u's top-k]: the forward value equals inference under the
hard plan, and ∂loss/∂γ exists for every token. With `checkpoint`, each sampling step runs under
torch.utils.checkpoint, so memory across the unrolled sampler is the latents and the caches each step
hands to the next, not every activation of every step; the backward pass must then run while the
engine is attached.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint

from methods.calls import as_tuple, from_tuple, scatter, gather
from methods.rankings import choose


class GatedTraining:
    def __init__(self, engine, gates, keep: list[float] | None, checkpoint: bool):
        plan = engine.plan
        gates = [gates] if isinstance(gates, torch.Tensor) else list(gates)
        shapes = [(plan.steps - 1, p.blocks, len(p.sublayers)) for p in plan.groups]
        if keep is None or len(gates) != len(shapes) or any(
                tuple(t.shape[:3]) != shape or t.shape[3] != len(keep) for t, shape in zip(gates, shapes)):
            want = ", ".join(f"({a}, {b}, {c}, {len(keep) if keep else '?'})" for a, b, c in shapes)
            raise ValueError(f"gates must be (steps-1, blocks, sub-layers, len(keep)) per group = {want}; "
                             f"got {[tuple(t.shape) for t in gates]}")
        if engine.ranking is None:
            raise ValueError("training gates need a ranking to order the tokens")
        self.engine, self.gates, self.keep, self.checkpoint = engine, gates, keep, checkpoint

    def run(self, site, module, forward, args, kwargs):
        """One gated sub-layer call: every token computed, mixed with the cache by γ per stream."""
        eng = self.engine
        gate = self.gates[site.g][eng.step - 1, site.b, site.i]                 # (S,)
        xs = [site.args.get(args, kwargs, a) for a in site.spec.args]
        states = [eng.states[(site.g, site.b, site.i, s)] for s in range(site.n)]
        hard = int(gate.detach().argmax())
        masks, idxs, ks = [], [], []
        for s, (x, state) in enumerate(zip(xs, states)):
            N = x.shape[1]
            counts = [N if f >= 1 else int(f * N) for f in self.keep]
            k = counts[hard]                                                     # the hard choice's token count
            ks.append(k)
            scores = eng.scores(site, s, x, state)
            pick = lambda c: choose(scores, c, eng.cfg_halves, eng.ranking.cfg_choice)  # noqa: E731
            stream_masks = []
            for c in counts:
                m = torch.zeros(scores.shape, dtype=x.dtype, device=x.device)
                stream_masks.append(m.fill_(1.0) if c >= N else m.scatter_(1, pick(c), 1.0) if c else m)
            masks.append(stream_masks)
            idxs.append(pick(k) if 0 < k < N else None)
        run = lambda: forward(*args, **kwargs)  # noqa: E731
        # As inference: the ranking observes the tokens the hard choice computes (none when k = 0).
        partial = [i for i in idxs if i is not None]
        fresh = eng.observed(site, module, partial or None, args, kwargs, run) if any(ks) else run()
        outs = []
        for x, state, f, stream_masks, idx, k in zip(xs, states, as_tuple(fresh, site.n), masks, idxs, ks):
            N = x.shape[1]
            gamma = torch.einsum("s,sbn->bn", gate.to(x.dtype), torch.stack(stream_masks)).unsqueeze(-1)
            out = gamma * f + (1 - gamma) * state.output
            if k == N:
                state.staleness = torch.zeros_like(state.staleness)
                if state.last_input is not None:
                    state.last_input = x
            elif k:
                state.staleness = (state.staleness + 1).scatter(1, idx, 0)
                if state.last_input is not None:
                    state.last_input = scatter(state.last_input, idx, gather(x, idx))
            else:
                state.staleness = state.staleness + 1
            state.output = out
            outs.append(out)
        return from_tuple(outs, site.n)

    # ---- checkpointing ------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """What a step reads from the engine: step, caches, ranking statistics. Cheap: every update makes
        new tensors, so references suffice."""
        eng = self.engine
        return (eng.step, eng.training, eng._keeps, eng._ratios_now, eng._skip_now,
                {k: v.copy() for k, v in eng.states.items()}, eng.ranking.state(), dict(eng.block_cache))

    def restore(self, snap: tuple) -> None:
        eng = self.engine
        eng.step, eng.training, eng._keeps, eng._ratios_now, eng._skip_now, states, ranked, blocks = snap
        eng.states = {k: v.copy() for k, v in states.items()}
        eng.ranking.load_state(ranked)
        eng.block_cache = dict(blocks)

    def checkpointed_step(self, forward, args, kwargs):
        """One denoiser call under torch.utils.checkpoint (non-reentrant): autograd keeps none of the
        step's internals, and the backward pass re-runs the step from the engine state it started from
        (restored from a snapshot, then put back)."""
        before, calls = self.snapshot(), [0]

        def run():
            calls[0] += 1
            if calls[0] == 1:
                return forward(*args, **kwargs)
            if not self.engine.attached:
                raise RuntimeError("a checkpointed training step is recomputed in the backward pass through the "
                                   "engine's hooks: call backward() while the engine is attached")
            now = self.snapshot()
            self.restore(before)
            try:
                return forward(*args, **kwargs)
            finally:
                self.restore(now)
        return torch.utils.checkpoint.checkpoint(run, use_reentrant=False)
