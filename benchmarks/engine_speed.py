"""Engine speed: per method the measured speedup over `none`, the MAC-ideal speedup (ratio of MACs
counted while running, attention included) and their ratio; and the overhead of an all-ones plan
against the plain pipeline. All timings come from one run, interleaved (metrics/latency.py).

Models: `mid_pixart` (default; CPU-sized PixArt, 8 blocks, width 512, 256 image + 120 text tokens),
`mid_dit` (CPU-sized DiT: 8 blocks, width 512, 256 tokens), the two trained CPU proxies `proxy_pixart`
and `proxy_dit` (source "proxy", the committed weights, with tests/smoke.yaml's run settings and
method variants), `tiny_wan` and `tiny_flux` (CPU), and on a GPU the full-size architectures with seeded random
weights, e.g. `wan21_t2v_1_3b` (480×832×81 frames, two CFG calls per step) or `pixart_alpha_256`.

Token methods (ToCa, DuCa, DiffSparse) run with each family's settings: PixArt ToCa's / DuCa's README
settings, DiT the official DiT code's (constants `dit`, per-row CFG choice; config.yaml's toca_dit,
duca_dit). DiffSparse runs where a committed schedule fits the model (SCHEDULES below; the proxies'
R = 43 % schedules of configs/diffsparse_proxy.yaml); elsewhere it is skipped, and the script says so.
The ratio measured ÷ MAC-ideal is the engine's efficiency: 1 when the time saved is what the MACs saved.

    python benchmarks/engine_speed.py [--model mid_pixart] [--device cpu] [--steps 20] [--batch 2] [--repeats 3]
                                      [--methods none toca duca diffsparse] [--threads 1] [--stat median]
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

METHODS = ["none", "steps_50", "fora_n2", "deepcache_n2", "taylorseer_n2", "toca", "duca", "dicache"]  # + diffsparse where a schedule fits
TOKEN_METHODS = ("toca", "duca", "diffsparse")
SETTINGS = {  # family -> model entry fields; full-size models run with random weights (`random`)
    "pixart": dict(scheduler="dpm_solver_pp", guidance_scale=4.5, dataset="tiny_prompts"),
    "dit": dict(scheduler="ddim", guidance_scale=1.5, dataset="imagenet_classes"),
    "wan": dict(scheduler="unipc_flow", guidance_scale=5.0, dataset="tiny_prompts"),
    "flux": dict(scheduler="flow_euler", guidance_scale=0.0, dataset="tiny_prompts"),
}
# The trained proxies run as `make smoke` runs them (tests/smoke.yaml): their own datasets and guidance.
PROXY_SETTINGS = {
    "proxy_pixart": dict(scheduler="dpm_solver_pp", guidance_scale=2.0, dataset="shapes_captions"),
    "proxy_dit": dict(scheduler="ddim", guidance_scale=1.5, dataset="shapes_classes"),
}
# Committed DiffSparse schedules (T = 20, the proxies' 6-block layouts), trained by configs/proxy_schedules.yaml
# with tests/smoke.yaml's ToCa settings. No schedule fits mid_pixart / mid_dit (8 blocks).
SCHEDULES = {
    "proxy_pixart": "models/proxies/schedules/proxy_pixart/diffsparse_r43.safetensors",
    "proxy_dit": "models/proxies/schedules/proxy_dit/diffsparse_dit_r43.safetensors",
}


def _token_variants(family: str, tiny: bool) -> dict:
    """toca / duca / diffsparse settings for a model family (smoke.yaml's variants)."""
    smoke = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())["methods"]
    if family == "flux":  # the official FLUX ToCa code's constants (DuCa's FLUX rule is not ported: ToCa's)
        return {"toca": dict(smoke["toca_flux"]), "duca": {**smoke["toca_flux"], "method": "duca"},
                "diffsparse": {"method": "diffsparse", "ratio": 0.6, "interval": 0.25,
                               "toca": dict(smoke["diffsparse_flux"]["toca"])}}
    if family == "dit":  # the official DiT code's constants and per-row CFG choice
        toca, duca = smoke["toca_dit"], smoke["duca_dit"]
        ds_toca = {k: v for k, v in smoke["diffsparse_dit_r43"]["toca"].items()}
    else:
        toca, duca = dict(smoke["toca"]), dict(smoke["duca"])
        ds_toca = {k: v for k, v in smoke["diffsparse_r43"]["toca"].items()}
        if tiny and family == "pixart":  # mid_pixart's 16×16 grid: the spatial bonus in 4×4 cells, as before
            toca["grid"] = duca["grid"] = 4
        if family == "wan":
            toca["grid"] = duca["grid"] = 2
    return {"toca": dict(toca), "duca": dict(duca),
            "diffsparse": {"method": "diffsparse", "ratio": 0.43, "interval": 0.25, "toca": ds_toca}}


def bench_config(steps: int, batch: int, repeats: int, model: str = "mid_pixart", device: str = "cpu",
                 methods: list[str] | None = None) -> dict:
    from models.registry import get_preset

    preset = get_preset(model)
    methods = list(methods or (METHODS + ["diffsparse"] * (model in SCHEDULES)))
    cfg = copy.deepcopy(yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))
    cfg["methods"]["dicache"]["threshold"] = 0.3
    cfg["methods"].update(_token_variants(preset.family, preset.is_tiny and not preset.proxy))
    if "diffsparse" in methods:
        path = SCHEDULES.get(model)
        if path is None or not (REPO / path).is_file():
            print(f"diffsparse skipped: no committed schedule fits {model} (committed: {', '.join(SCHEDULES)})")
            methods.remove("diffsparse")
        else:
            cfg["methods"]["diffsparse"]["schedule"] = str(REPO / path)
    if "none" not in methods:
        methods.insert(0, "none")
    source = "proxy" if preset.proxy else "tiny" if preset.is_tiny else "random"
    if model not in PROXY_SETTINGS and preset.family not in SETTINGS:
        raise ValueError(f"engine_speed has no run settings for the {preset.family} family ({model})")
    run = PROXY_SETTINGS.get(model, SETTINGS.get(preset.family))
    cfg["models"] = {model: {"source": source, **run, "steps": steps, "num_samples": max(batch, 2),
                             "methods": methods}}
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
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"variants to time (default: {' '.join(METHODS)}, and diffsparse on {', '.join(SCHEDULES)})")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="which per-method time the speedups use (min: least disturbed by other load on the machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.steps, args.batch, args.repeats, args.model, args.device, args.methods)
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
    key = f"{args.stat}_s"
    base = t["none"][key]
    layout = cells["none"].adapter.layout(pipe)
    calls = cells["none"].adapter.engine_cfg(guidance)
    cfg_note = " (+CFG)" if calls.get("cfg_halves", 1) > 1 or calls.get("branches", 1) > 1 else " (no CFG)"
    print(f"{args.model} ({cfg['models'][args.model]['source']}): {' + '.join(f'{g.blocks} {g.name}' for g in layout.groups)}, {args.steps} steps, "
          f"batch {args.batch}{cfg_note}, {args.device}, {torch.get_num_threads()} threads, {args.stat} of {args.repeats}")
    for m in TOKEN_METHODS:
        if m in cells:
            shown = {k: v for k, v in cfg["methods"][m].items() if k not in ("method", "schedule", "train")}
            print(f"  {m}: {shown}" + (f", schedule {cfg['methods'][m]['schedule']}" if m == "diffsparse" else ""))
    print(f"{'method':<15} {'latency s':>10} {'measured':>9} {'MAC-ideal':>10} {'ratio':>6}")
    for m in methods:
        measured, ideal = base / t[m][key], macs["none"] / macs[m]
        flag = "  <- slower than none" if measured < 1 else ""
        print(f"{m:<15} {t[m][key]:>10.3f} {measured:>8.2f}x {ideal:>9.2f}x {measured / ideal:>6.2f}{flag}")
    overhead = t["none"][key] / t["plain pipeline"][key] - 1
    print(f"all-ones plan overhead vs the plain pipeline: {overhead * 100:+.1f} %")


if __name__ == "__main__":
    main()
