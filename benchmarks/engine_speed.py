"""Engine speed on a CPU-sized PixArt (`mid_pixart`: 8 blocks, width 512, 256 image + 120 text tokens,
random weights): per method the measured speedup over `none`, the MAC-ideal speedup (ratio of MACs
counted while running, attention included) and their ratio; and the overhead of an all-ones plan
against the plain pipeline. All timings come from one run, interleaved (metrics/latency.py).

    python benchmarks/engine_speed.py [--steps 20] [--batch 2] [--repeats 3]
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


def bench_config(steps: int, batch: int, repeats: int) -> dict:
    cfg = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["methods"]["dicache"]["threshold"] = 0.3
    for v in ("toca", "duca"):
        cfg["methods"][v]["grid"] = 4
    cfg["models"] = {"mid_pixart": {**cfg["models"]["tiny_pixart"], "steps": steps, "num_samples": batch,
                                    "methods": METHODS}}
    cfg["latency"] = {"warmup": 1, "repeats": repeats, "batch_size": batch}
    cfg["tables"] = {}
    return config_mod.validate(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = bench_config(args.steps, args.batch, args.repeats)
    cells = {m: Cell(cfg, "mid_pixart", m) for m in METHODS}
    pipe = cells["none"].build_pipeline()
    conds, seeds = cells["none"].conditions()[: args.batch], list(range(args.batch))
    guidance = cfg["models"]["mid_pixart"]["guidance_scale"]

    def accelerated(cell):
        def go():
            with cell.accelerated(pipe) as engine:
                cell.sample(pipe, engine, conds, seeds)
        return go

    def plain():
        with torch.inference_mode():
            cells["none"].adapter.sample(pipe, conds, seeds, num_steps=args.steps, guidance_scale=guidance)

    runs = {"plain pipeline": plain, **{m: accelerated(c) for m, c in cells.items()}}
    t = time_interleaved(runs, warmup=1, repeats=args.repeats, device="cpu")
    macs = {m: count_macs(c, "cpu" if c.dynamic else "meta", images=args.batch)["macs_total"]
            for m, c in cells.items()}
    base = t["none"]["median_s"]
    print(f"mid_pixart: 8 blocks, width 512, 256+120 tokens, {args.steps} steps, batch {args.batch} "
          f"(+CFG), {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<15} {'latency s':>10} {'measured':>9} {'MAC-ideal':>10} {'ratio':>6}")
    for m in METHODS:
        measured, ideal = base / t[m]["median_s"], macs["none"] / macs[m]
        print(f"{m:<15} {t[m]['median_s']:>10.3f} {measured:>8.2f}x {ideal:>9.2f}x {measured / ideal:>6.2f}")
    overhead = t["none"]["median_s"] / t["plain pipeline"]["median_s"] - 1
    print(f"all-ones plan overhead vs the plain pipeline: {overhead * 100:+.1f} %")


if __name__ == "__main__":
    main()
