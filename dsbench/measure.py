"""MACs and latency of cells: the same pipeline and engine code path as generation."""
from __future__ import annotations

import torch

from dsbench.cell import Cell


def count_macs(cell: Cell, device: str = "meta", images: int = 1) -> dict:
    """Per-image MACs of one whole sampling run, counted while it runs (meta: full size, no weights)."""
    from metrics.macs import count_macs as counter

    meta = device == "meta"
    pipe = cell.build_pipeline(device=None if meta else device, meta=meta)
    conds = cell.conditions()[:images] if not meta else _dummy_conditions(cell, images)
    with cell.accelerated(pipe) as engine, counter(cell.adapter.denoiser(pipe)) as tally:
        cell.sample(pipe, engine, conds, list(range(images)))
    per_image = tally.per_image(images)
    return {"model": cell.model, "method": cell.method, "device": device, "num_steps": cell.num_steps,
            **per_image, "macs_by_op": {k: v / images for k, v in tally.per_op.items()},
            "convention": {"macs_c1": "linear+conv of the denoiser, per image, one CFG branch",
                           "macs_total": "all counted denoiser ops per image, attention and CFG batch included"}}


def _dummy_conditions(cell: Cell, n: int) -> list:
    return [0] * n if cell.adapter.family == "dit" else ["a photo"] * n


def measure_latency(config: dict, model: str, methods: list[str]) -> dict:
    """Median latency of one batch per method variant and the speedup against `none`, in one run."""
    from metrics.latency import speedups, time_interleaved

    if "none" not in methods:
        methods = ["none", *methods]
    cells = {m: Cell(config, model, m) for m in methods}
    lat = config["latency"]
    pipe = cells["none"].build_pipeline()
    conds = cells["none"].conditions()[: lat["batch_size"]]
    seeds = list(range(len(conds)))

    def run(cell: Cell):
        def go():
            with cell.accelerated(pipe) as engine:
                cell.sample(pipe, engine, conds, seeds)
        return go

    timings = time_interleaved({m: run(c) for m, c in cells.items()}, warmup=lat["warmup"],
                               repeats=lat["repeats"], device=config["device"])
    sp = speedups(timings)
    from dsbench.provenance import device_name

    return {"model": model, "batch_size": len(conds), "device": device_name(config["device"]),
            "threads": torch.get_num_threads(),
            "methods": {m: {**timings[m], "speedup": sp[m]} for m in methods}}
