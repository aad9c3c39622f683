"""Engine speed: per method the measured speedup over `none`, the MAC-ideal speedup (ratio of MACs
counted while running, attention included) and their ratio; and the overhead of an all-ones plan
against the plain pipeline. All timings come from one run, interleaved (metrics/latency.py).

Models: `mid_pixart` (default; CPU-sized PixArt, 8 blocks, width 512, 256 image + 120 text tokens),
`tiny_wan` (CPU), and on a GPU the full-size architectures with seeded random weights, e.g.
`wan21_t2v_1_3b` (480×832×81 frames, two CFG calls per step) or `pixart_alpha_256`.

    python benchmarks/engine_speed.py [--model mid_pixart] [--device cpu] [--steps 20] [--batch 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy

import torch
import yaml

from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.config import REPO
from dsbench.measure import count_macs
from metrics.latency import time_interleaved

METHODS = ["none", "steps_50", "fora_n2", "deepcache_n2", "taylorseer_n2", "toca", "duca", "dicache"]
SETTINGS = {  # family -> model entry fields; full-size models run with random weights (`random`)
    "pixart": dict(scheduler="dpm_solver_pp", guidance_scale=4.5),
    "dit": dict(scheduler="ddim", guidance_scale=1.5, dataset="imagenet_classes"),
    "wan": dict(scheduler="unipc_flow", guidance_scale=5.0),
}


def bench_config(steps: int, batch: int, repeats: int, model: str = "mid_pixart", device: str = "cpu") -> dict:
    from models.registry import get_preset

    preset = get_preset(model)
    cfg = copy.deepcopy(yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))
    cfg["methods"]["dicache"]["threshold"] = 0.3
    for v in ("toca", "duca"):
        cfg["methods"][v]["grid"] = 4 if preset.family != "wan" else 2
    cfg["models"] = {model: {"source": "tiny" if preset.is_tiny else "random", "dataset": "tiny_prompts",
                             **SETTINGS[preset.family], "steps": steps, "num_samples": max(batch, 2),
                             "methods": METHODS}}
    cfg["latency"] = {"warmup": 1, "repeats": repeats, "batch_size": batch}
    cfg["device"], cfg["tables"] = device, {}
    return config_mod.validate(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="mid_pixart")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = bench_config(args.steps, args.batch, args.repeats, args.model, args.device)
    methods = cfg["models"][args.model]["methods"]
    cells = {m: Cell(cfg, args.model, m) for m in methods}
    pipe = cells["none"].build_pipeline()
    conds, seeds = cells["none"].conditions()[: args.batch], list(range(args.batch))
    guidance = cfg["models"][args.model]["guidance_scale"]

    def accelerated(cell):
        def go():
            with cell.accelerated(pipe) as engine:
                cell.sample(pipe, engine, conds, seeds)
        return go

    def plain():
        with torch.inference_mode():
            cells["none"].adapter.sample(pipe, conds, seeds, num_steps=args.steps, guidance_scale=guidance)

    runs = {"plain pipeline": plain, **{m: accelerated(c) for m, c in cells.items()}}
    t = time_interleaved(runs, warmup=1, repeats=args.repeats, device=args.device)
    macs = {m: count_macs(c, args.device if c.dynamic else "meta", images=args.batch)["macs_total"]
            for m, c in cells.items()}
    base = t["none"]["median_s"]
    layout = cells["none"].adapter.layout(pipe)
    print(f"{args.model}: {layout.blocks} blocks, {args.steps} steps, batch {args.batch} (+CFG), {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<15} {'latency s':>10} {'measured':>9} {'MAC-ideal':>10} {'ratio':>6}")
    for m in methods:
        measured, ideal = base / t[m]["median_s"], macs["none"] / macs[m]
        print(f"{m:<15} {t[m]['median_s']:>10.3f} {measured:>8.2f}x {ideal:>9.2f}x {measured / ideal:>6.2f}")
    overhead = t["none"]["median_s"] / t["plain pipeline"]["median_s"] - 1
    print(f"all-ones plan overhead vs the plain pipeline: {overhead * 100:+.1f} %")


if __name__ == "__main__":
    main()
