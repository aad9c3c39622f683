"""MACs counted while sampling runs, in two conventions.

`torch.utils.flop_counter.FlopCounterMode` is wrapped around every call of the denoiser (not the text
encoder or the VAE, which every method shares). Per call we split its count by aten op:
- linear and conv layers (`mm`, `addmm`, `convolution`): the paper's convention, `macs_c1`, taken per
  image and per CFG branch, i.e. divided by the rows of the denoiser batch;
- everything the counter sees (attention matmuls included), per image with the CFG rows included:
  `macs_total`.
On the meta device SDPA decomposes into counted matmuls; on a CPU with real tensors the fused SDPA
kernel is invisible to the counter (FlopCounterMode has no formula for it), so the math backend is
forced while counting.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

LINEAR_CONV_OPS = {"mm", "addmm", "convolution", "_convolution"}


def _op_name(op) -> str:
    return getattr(op, "__name__", str(op)).split(".")[0]


@dataclass
class MacTally:
    calls: int = 0
    c1: float = 0.0              # Σ over calls of linear/conv MACs
    total: float = 0.0           # Σ over calls of all counted MACs
    per_op: dict[str, float] = field(default_factory=dict)
    per_module: dict[str, float] = field(default_factory=dict)  # module name (FlopCounterMode's) -> Σ MACs

    def add(self, counts: dict, modules: dict | None = None, calls: int = 1) -> None:
        self.calls += calls
        for name, ops in (modules or {}).items():
            if name != "Global":
                self.per_module[name] = self.per_module.get(name, 0.0) + sum(ops.values()) / 2
        for op, flops in counts.items():
            name = _op_name(op)
            macs = flops / 2
            self.per_op[name] = self.per_op.get(name, 0.0) + macs
            self.total += macs
            if name in LINEAR_CONV_OPS:
                self.c1 += macs

    def per_image(self, images: int, cfg_rows: int) -> dict[str, float]:
        """Per image: c1 for one CFG branch (`cfg_rows` rows per image in the denoiser batch), total with all."""
        return {"macs_c1": self.c1 / (images * cfg_rows), "macs_total": self.total / images,
                "denoiser_calls": self.calls}


class _Counting:
    """FlopCounterMode opened in a forward pre-hook of the denoiser and closed in its forward hook: plain torch
    hooks, which wrap whatever `forward` is installed (diffusers' and cache-dit's caches replace it) without
    replacing it themselves."""

    def __init__(self, denoiser: torch.nn.Module, tally: MacTally):
        self.tally, self._open = tally, []
        self.handles = [denoiser.register_forward_pre_hook(self._before, with_kwargs=True),
                        denoiser.register_forward_hook(self._after, always_call=True)]

    def _before(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        stack = contextlib.ExitStack()
        if hidden.device.type == "cpu":
            stack.enter_context(torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH))
        counter = stack.enter_context(FlopCounterMode(display=False))
        self._open.append((stack, counter))

    def _after(self, module, args, output):
        stack, counter = self._open.pop()
        stack.close()
        counts = counter.get_flop_counts()
        self.tally.add(counts["Global"], counts)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def count_macs(denoiser: torch.nn.Module, whole_run: bool = False, blocks: dict | None = None):
    """Context in which every denoiser call is counted; yields the running MacTally.

    `whole_run`: one FlopCounterMode open over everything run inside the context, and each denoiser call (and
    each of `blocks`, name -> module) counted as the difference of its cumulative counts before and after the
    call. For caches that re-enter the denoiser's modules from wrappers (cache-dit's CachedBlocks hold the
    transformer as a child): a counter opened inside the denoiser's call first meets the wrapper and its module
    tracker recurses into the cycle, and the tracker's own attribution to modules is not trusted there."""
    tally = MacTally()
    if not whole_run:
        counting = _Counting(denoiser, tally)
        try:
            yield tally
        finally:
            counting.remove()
        return
    counter = FlopCounterMode(display=False)
    open_calls: list = []

    def snapshot() -> dict:
        return dict(counter.get_flop_counts().get("Global", {}))

    def delta(before: dict) -> dict:
        return {op: v - before.get(op, 0) for op, v in snapshot().items() if v != before.get(op, 0)}

    def enter(*_):
        open_calls.append(snapshot())

    def leave_denoiser(*_):
        tally.add(delta(open_calls.pop()))

    def leave_block(name):
        def leave(*_):
            macs = sum(delta(open_calls.pop()).values()) / 2
            tally.per_module[name] = tally.per_module.get(name, 0.0) + macs
        return leave

    handles = [denoiser.register_forward_pre_hook(enter), denoiser.register_forward_hook(leave_denoiser, always_call=True)]
    for name, block in (blocks or {}).items():
        handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave_block(name), always_call=True)]
    try:
        with contextlib.ExitStack() as stack:
            if next(denoiser.parameters()).device.type == "cpu":
                stack.enter_context(torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH))
            stack.enter_context(counter)
            yield tally
    finally:
        for h in handles:
            h.remove()


def blocks_computed(peer: MacTally, full: MacTally, blocks: list[str]) -> float:
    """Mean blocks computed per denoiser call, in block equivalents: Σ over blocks of the MACs a block ran in
    `peer`'s calls ÷ what it costs in one call of `full` (a plain run of the same batch shape), divided by
    `peer`'s calls. A block a cache skips counts 0, a block whose attention alone was reused a fraction.
    `blocks`: each block's name in both tallies' `per_module` (count_macs' `blocks`)."""
    total = 0.0
    for b in blocks:
        one_call = full.per_module.get(b, 0.0) / max(full.calls, 1)
        if one_call <= 0:
            raise ValueError(f"block {b} ran no counted op in the plain run: cannot count its share")
        total += peer.per_module.get(b, 0.0) / one_call
    return total / max(peer.calls, 1)


def module_costs(counts: dict, root: str, rows: int) -> dict[str, float]:
    """Linear/conv MACs per batch row of each module below `root`, from FlopCounterMode.get_flop_counts()
    (keys "Root.path.to.module"; the counter must be entered outside the root's call to name them)."""
    out = {}
    for path, ops in counts.items():
        if path.startswith(root + "."):
            out[path[len(root) + 1:]] = sum(f / 2 for op, f in ops.items() if _op_name(op) in LINEAR_CONV_OPS) / rows
    return out


def predict_c1(plan, per_compute: dict[str, float], per_step: dict[str, float], groups: list,
               tokens: dict[str, int]) -> float:
    """`macs_c1` of a whole run predicted from a plan and per-module costs (per batch row).

    `groups`: per block group, (its BlockGroup description, the module names of its blocks);
    `tokens`: tokens per stream. `per_compute[m]`: what module m costs each time its block computes;
    `per_step[m]`: what it costs on every step whatever the blocks do (embedders, caption projection,
    final layer — and DiT's final layer re-using block 0's label embedder). A sub-layer computing k of
    the N tokens of a stream costs a·k on that stream's layers, plus b from the layers that always see
    every token (key/value projections) whenever it computes any; a reused sub-layer costs nothing and a
    skipped block nothing at all. A test holds this equal to the counted value for every static method.
    """
    from methods.plan import COMPUTE

    def leaves(costs):
        return {k: v for k, v in costs.items() if v and not any(o.startswith(k + ".") for o in costs)}

    per_compute, always = leaves(per_compute), sum(leaves(per_step).values())
    in_blocks = {b: {k: v for k, v in per_compute.items() if k.startswith(b + ".")} for _, names in groups for b in names}
    macs = 0.0
    for s in range(plan.steps):
        macs += always
        for g, ((group, names), gplan) in enumerate(zip(groups, plan.groups)):
            for l, b in enumerate(names):
                if plan.skip_mode(s, l, g) != COMPUTE:
                    continue
                rest = dict(in_blocks[b])
                for m, sub in enumerate(group.sublayers):
                    streams = dict(sub.stream_modules)
                    owned = [f"{b}.{o}" for o in (sub.owns or (sub.name,))]
                    mods = {k: rest.pop(k) for k in list(rest) if any(k == o or k.startswith(o + ".") for o in owned)}
                    r = float(gplan.ratios[s, l, m])
                    counts = {st: tokens[st] if r >= 1 else int(r * tokens[st]) for st in sub.streams}
                    cost = 0.0
                    for k, v in mods.items():
                        if k.rsplit(".", 1)[-1] in sub.full_modules:
                            continue
                        child = k[len(b) + 1:].split(".")
                        st = streams.get(child[1] if len(child) > 1 and child[0] == sub.name else child[0], sub.streams[0])
                        cost += v / tokens[st] * counts[st]
                    if any(counts.values()):
                        cost += sum(v for k, v in mods.items() if k.rsplit(".", 1)[-1] in sub.full_modules)
                    macs += cost
                macs += sum(rest.values())  # the block's own layers outside its sub-layers (DiT's adaLN)
    return macs


# ---- DiT's convention (SparseDiT's paper reports it): one forward pass of one image -------------------------
def paper_macs_per_forward(model: torch.nn.Module, g: int | None = None, pooling: str = "paper") -> float:
    """Multiply-adds of one forward pass of a DiT or SparseDiT transformer on one image (batch 1, one CFG
    branch): every matmul it executes, linear and conv layers and the attention products QKᵀ and AV alike,
    as DiT reports its Gflops and SparseDiT its per-grid figures. Counted while the forward runs (on the meta
    device: full size, no weights). `g`: SparseDiT's sparse grid for this forward (None: a DiT, or the
    model's fixed grid). `pooling`: how a Poolingformer's uniform attention is counted: "paper" runs V and
    the output projection on every token, as the paper counts them; "ours" as this harness executes it
    (mean first: one token through V and the projection, 2·(N−1)·C² fewer per Poolingformer)."""
    from models.sparsedit_blocks import ValueOnlyAttention

    if pooling not in ("paper", "ours"):
        raise ValueError(f"pooling must be 'paper' or 'ours', got {pooling!r}")
    cfg, device = model.config, next(model.parameters()).device
    side = cfg.sample_size
    x = torch.zeros(1, cfg.in_channels, side, side, device=device, dtype=model.dtype)
    t = torch.zeros(1, dtype=torch.long, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    pools = [m for m in model.modules() if isinstance(m, ValueOnlyAttention)]
    math_sdpa = (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
                 if device.type == "cpu" else contextlib.nullcontext())  # a fused kernel is not counted
    try:
        for m in pools:
            m.per_token = pooling == "paper"
        with torch.no_grad(), math_sdpa, FlopCounterMode(display=False) as counter:
            model(x, timestep=t, class_labels=y, **({} if g is None else {"sparse_grid": g}))
    finally:
        for m in pools:
            m.per_token = False
    return sum(counter.get_flop_counts()["Global"].values()) / 2


def paper_macs_mean(model: torch.nn.Module, timesteps, pooling: str = "paper") -> float:
    """`paper_macs_per_forward` averaged over the forwards of a sampling run at `timesteps` (DiT's 0 … 999
    index), each at its own sparse grid from the model's temporal density."""
    side = model.config.sample_size // model.config.patch_size
    grids = [model.density.grid(float(t), (side, side)) for t in timesteps]
    per_grid = {g: paper_macs_per_forward(model, g, pooling) for g in set(grids)}
    return sum(per_grid[g] for g in grids) / len(grids)
