"""MACs and latency of cells: the same pipeline and engine code path as generation."""
from __future__ import annotations

import torch

from dsbench.cell import Cell
from methods.plan import SKIP_OUTPUT


def count_macs(cell: Cell, device: str = "meta", images: int = 1) -> dict:
    """Per-image MACs of one whole sampling run, counted while it runs (meta: full size, no weights)."""
    from metrics.macs import count_macs as counter

    if device == "auto":  # static plans count on the meta device; run-time decisions need real runs
        device, images = (cell.config["device"], max(images, min(cell.num_samples, 8))) if cell.dynamic \
            else ("meta", images)
    meta = device == "meta"
    if meta and cell.accelerator.attaches_peer:
        raise ValueError(f"{cell.method}: a peer cache decides on the values it sees, which the meta device has "
                         "not; count it on a real device (dsbench macs --device auto)")
    pipe = cell.build_pipeline(device=None if meta else device, meta=meta)
    conds = cell.conditions()[:images] if not meta else _dummy_conditions(cell, images)
    from dsbench.samples import sample_seed

    seeds = [sample_seed(cell.config["seed"], i) for i in range(images)]
    denoiser = cell.adapter.denoiser(pipe)
    peer, blocks = {}, None
    if cell.accelerator.attaches_peer:  # what each block costs when it runs: one plain run of the peer's batch
        names = {id(m): n for n, m in denoiser.named_modules()}
        blocks = {names[id(b)]: b for g in cell.adapter.groups for b in cell.adapter.group_blocks(pipe, g)}
        batch = 1 if cell.accelerator.per_image else images  # the batch of its calls below (Cell.sample)
        with counter(denoiser, whole_run=True, blocks=blocks) as plain, torch.inference_mode():
            cell.adapter.sample(pipe, conds[:batch], seeds[:batch], num_steps=cell.num_steps,
                                guidance_scale=cell.model_cfg["guidance_scale"])
    with cell.accelerated(pipe) as engine, \
            counter(denoiser, whole_run=cell.accelerator.attaches_peer, blocks=blocks) as tally:
        cell.sample(pipe, engine, conds, seeds)
        runs = list(engine.controller.runs) if engine.controller is not None else None
        planned = engine.plan.full_steps() if engine.plan is not None else None
        stats = engine.stats() if cell.accelerator.attaches_peer else {}
    if cell.accelerator.attaches_peer:  # the tally is complete once its context has closed
        from metrics.macs import blocks_computed

        peer = {"blocks_computed_per_call": blocks_computed(tally, plain, list(blocks)),
                "blocks": cell.adapter.layout(pipe).total_blocks, **stats}
    per_image = tally.per_image(images, cell.adapter.cfg_branches(cell.model_cfg["guidance_scale"]))
    # DiT's own convention too (SparseDiT's paper reports it), where every forward runs whole: a cache's
    # forwards differ step by step, and one per-forward figure would not describe them.
    if meta and cell.adapter.family == "dit" and planned is not None and len(planned) == cell.num_steps:
        extra_paper = _paper_figures(cell.adapter.denoiser(pipe), pipe.scheduler.timesteps)
    else:
        extra_paper = {}
    # One entry per sample and denoiser stream (Wan: cond and uncond decide apart).
    extra = {"images": images, "full_steps_mean": sum(runs) / len(runs), "full_steps": runs} if runs else {}
    if peer:
        extra = {"images": images, **peer}
    return {"model": cell.model, "method": cell.method, "device": device, "num_steps": cell.num_steps,
            **per_image, **extra, **extra_paper, "plan_full_steps": planned, "macs_by_op": {k: v / images for k, v in tally.per_op.items()},
            "convention": {"macs_c1": "linear+conv of the denoiser, per image, one CFG branch",
                           "macs_total": "all counted denoiser ops per image, attention and CFG batch included"}}


def _paper_figures(denoiser, timesteps) -> dict:
    """DiT's convention: multiply-adds of one forward of one image, every matmul (QKᵀ and AV included),
    averaged over the run's forwards at their own timesteps (SparseDiT: each at its sparse grid)."""
    from metrics.macs import paper_macs_mean, paper_macs_per_forward

    steps = [float(t) for t in timesteps]
    mean = paper_macs_mean(denoiser, steps) if hasattr(denoiser, "density") else paper_macs_per_forward(denoiser)
    return {"paper_macs_per_forward": mean,
            "paper_convention": "DiT's: one forward of one image, linear+conv+QKᵀ+AV, mean over the run's steps"}


def predict_macs(cell: Cell) -> float:
    """`macs_c1` predicted from the cell's plan and per-module costs calibrated on the meta device.

    Two counted two-step runs: A computes both steps, B skips every block at step 1. Per module,
    A − B is what it costs when its block computes and (2B − A)/2 what it costs on every step.
    (PixArt's pipeline mishandles a one-step run, hence two steps.)
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from methods.engine import Engine
    from methods.plan import GroupPlan, Plan
    from metrics.macs import module_costs, predict_c1

    if cell.accelerator.attaches_peer:
        raise ValueError(f"{cell.method}: a peer cache has no plan to predict from; its MACs are counted from "
                         "real runs (dsbench macs --device auto)")
    if cell.accelerator.replaces_denoiser:
        raise ValueError(f"{cell.method}: MAC prediction calibrates one cost per module, but SparseDiT's change "
                         f"with each step's sparse grid; count them instead (dsbench macs --device meta)")
    pipe = cell.build_pipeline(meta=True)
    denoiser, layout = cell.adapter.denoiser(pipe), cell.adapter.layout(pipe)
    guidance = cell.model_cfg["guidance_scale"]
    full = Plan.full(2, layout)
    skipped = Plan(groups=[GroupPlan(g.ratios, g.sublayers, _skip_step_1(g.blocks), name=g.name) for g in full.groups])
    counts = []
    for plan in (full, skipped):
        with Engine(cell.adapter, pipe, plan, **cell.adapter.engine_cfg(guidance)), \
                FlopCounterMode(display=False) as counter:
            cell.adapter.sample(pipe, _dummy_conditions(cell, 1), [0], num_steps=2, guidance_scale=guidance)
        counts.append(module_costs(counter.get_flop_counts(), type(denoiser).__name__,
                                   rows=cell.adapter.cfg_branches(guidance)))
    a, b = counts
    per_compute = {k: a[k] - b.get(k, 0.0) for k in a}
    per_step = {k: (2 * b.get(k, 0.0) - a[k]) / 2 for k in a}
    names = {id(m): n for n, m in denoiser.named_modules()}
    groups = [(g, [names[id(blk)] for blk in cell.adapter.group_blocks(pipe, g)]) for g in cell.adapter.groups]
    return predict_c1(cell.plan(pipe), per_compute, per_step, groups, cell.adapter.stream_tokens())


def _skip_step_1(blocks: int) -> torch.Tensor:
    skip = torch.zeros(2, blocks, dtype=torch.int8)
    skip[1] = SKIP_OUTPUT
    return skip


def _dummy_conditions(cell: Cell, n: int) -> list:
    return [0] * n if cell.adapter.family == "dit" else ["a photo"] * n


def measure_latency(config: dict, model: str, methods: list[str], threads: int | None = None) -> dict:
    """Latency of one batch per method variant (median, quartiles, timed runs; metrics/latency.py) and
    the speedup against `none` with its spread, in one run. `threads`: torch's intra-op threads for the
    run (the workflow passes the cores the latency job owns); default: torch's current setting."""
    from metrics.latency import speedups, time_interleaved

    if threads:
        torch.set_num_threads(threads)
    if "none" not in methods:
        methods = ["none", *methods]
    cells = {m: Cell(config, model, m) for m in methods}
    lat = config["latency"]
    pipe = cells["none"].build_pipeline()
    # A method that runs its own network (SparseDiT) gets its own pipeline; the others share the model's.
    pipes = {m: c.build_pipeline() if c.accelerator.replaces_denoiser else pipe for m, c in cells.items()}
    conds = cells["none"].conditions()[: lat["batch_size"]]
    seeds = list(range(len(conds)))

    def run(cell: Cell):
        pipe = pipes[cell.method]

        def go():
            with cell.accelerated(pipe) as engine:
                cell.sample(pipe, engine, conds, seeds)
        return go

    timings = time_interleaved({m: run(c) for m, c in cells.items()}, warmup=lat.get("warmup", 0),
                               repeats=lat["repeats"], min_run_time=lat.get("min_run_time", 0.0),
                               device=config["device"], threads=torch.get_num_threads())
    sp = speedups(timings)
    from dsbench.provenance import device_name

    return {"model": model, "batch_size": len(conds), "device": device_name(config["device"]),
            "threads": torch.get_num_threads(), "timer": "torch.utils.benchmark.Timer.blocked_autorange",
            "settings": {k: lat.get(k) for k in ("warmup", "repeats", "min_run_time")},
            "methods": {m: {**timings[m], **sp[m]} for m in methods}}


def cell_macs(cell: Cell) -> float:
    """`macs_c1` of a cell: predicted from its plan, or, for a method that decides at run time (DiCache, the
    peers), counted on real runs (the mean over up to 8 samples)."""
    return count_macs(cell, "auto")["macs_c1"] if cell.dynamic else predict_macs(cell)


def match_macs(config: dict, model: str, variant: str, key: str, target: float, lo: float, hi: float,
               tol: float = 0.005, max_iter: int = 30) -> tuple[float, float]:
    """The value of setting `key` of `variant` whose macs_c1 is within `tol` (relative) of `target`, by
    bisection on [lo, hi]; MACs may grow with the setting (ToCa's fresh_ratio) or shrink (a peer's
    threshold). Returns (value, its MACs); ValueError if [lo, hi] does not bracket the target. So methods
    can be compared at the same MACs, as DiffSparse's Table 1 does. A run-time method's MACs are counted,
    so they move in steps: the closest value found is returned when no value is within `tol`."""
    import copy

    from dsbench.matching import without_match

    def macs(value: float) -> float:
        cfg = copy.deepcopy(config)
        cfg["methods"][variant] = {**without_match(cfg["methods"][variant]), key: value}
        return cell_macs(Cell(cfg, model, variant))

    m_lo, m_hi = macs(lo), macs(hi)
    if not min(m_lo, m_hi) <= target <= max(m_lo, m_hi):
        raise ValueError(f"{variant}.{key} in [{lo}, {hi}] gives {m_lo:.4g}–{m_hi:.4g} MACs; the target "
                         f"{target:.4g} is outside")
    rising = m_hi >= m_lo
    best = min(((lo, m_lo), (hi, m_hi)), key=lambda p: abs(p[1] - target))
    for _ in range(max_iter):
        if abs(best[1] - target) <= tol * target:
            break
        mid = (lo + hi) / 2
        m = macs(mid)
        best = min((best, (mid, m)), key=lambda p: abs(p[1] - target))
        lo, hi = (mid, hi) if (m < target) == rising else (lo, mid)
    return best
