"""One model cell's results: per-method MACs, latency and quality merged into results/{model}.csv."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dsbench.io import read_json, write_text

TERA, GIGA = 1e12, 1e9
# Scalars of a cell's metrics JSON (dsbench/evaluate.py) carried into the model's CSV; absent ones are empty.
METRIC_KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "clip", "clip_x100", "clip_toca", "align", "image_reward",
               "vbench", "vbench_quality", "vbench_semantic", "psnr", "ssim", "lpips", "n_samples", "fid_n_ref",
               # bootstrap half-widths (metrics/bootstrap.py), their level and the samples behind fidelity
               "fid_ci", "align_ci", "psnr_ci", "ssim_ci", "lpips_ci", "ci_level", "fidelity_n")


# How far above its MAC-ideal the low end of a speedup's spread may be before it is flagged: per-op costs
# are not uniform (ops outside the MAC count such as norms and softmax, attention against linear layers)
# and quartiles over a few runs understate the spread. Steps methods measure within 1 % of their ideal on
# the proxies (75 % steps: 1.34x [1.32, 1.35] against 1.33x); the failures this catches were 2-3x over.
BEYOND_IDEAL_TOLERANCE = 0.05


def beyond_ideal(speedup_lo, speedup_ideal, tolerance: float = BEYOND_IDEAL_TOLERANCE) -> bool:
    """True when even the low end of a measured speedup's spread (metrics/latency.py: none's q25 over
    the method's q75) is above the method's MAC-ideal speedup (by more than `tolerance`, relative): no
    honest timing gets there, the baseline was slowed by something else (other jobs on the cores).
    False when either is unknown."""
    try:
        lo, ideal = float(speedup_lo), float(speedup_ideal)
    except (TypeError, ValueError):
        return False
    return not (math.isnan(lo) or math.isnan(ideal)) and lo > ideal * (1 + tolerance)


# A spread wider than this share of the speedup ((hi - lo) / speedup) marks a timing as noisy: idle runs
# on the proxies spread by 1-3 %; runs beside a CPU-heavy process by 50-300 %.
NOISY_SPREAD = 0.25
# speedup_flag values, worst first, and what each says about the row.
SPEEDUP_FLAGS = {
    "beyond_ideal": "measured speedup above its MAC-ideal beyond the timing spread: not trustworthy",
    "above_ideal": "measured speedup above its MAC-ideal, inside a wide timing spread: not trustworthy",
    "noisy": f"timing spread over {NOISY_SPREAD:.0%} of the speedup: the machine was busy",
}


def speedup_flag(speedup, speedup_lo, speedup_hi, speedup_ideal,
                 tolerance: float = BEYOND_IDEAL_TOLERANCE) -> str:
    """"" for a trustworthy speedup, else the worst key of SPEEDUP_FLAGS that applies: its low end above
    the MAC-ideal, its median above it (no plan runs faster than its MACs allow, so a timing disturbed),
    or a spread too wide to rank by. Unknown values raise no flag."""
    def num(x):
        try:
            return float(x)
        except (TypeError, ValueError):
            return math.nan

    sp, lo, hi, ideal = num(speedup), num(speedup_lo), num(speedup_hi), num(speedup_ideal)
    if beyond_ideal(lo, ideal, tolerance):
        return "beyond_ideal"
    if not (math.isnan(sp) or math.isnan(ideal)) and sp > ideal * (1 + tolerance):
        return "above_ideal"
    if not (math.isnan(sp) or math.isnan(lo) or math.isnan(hi)) and sp > 0 and (hi - lo) / sp > NOISY_SPREAD:
        return "noisy"
    return ""


def aggregate(model: str, methods: list[str], macs: list[Path], metrics: list[Path], latency: Path,
              provenance: dict[str, dict], out: Path) -> pd.DataFrame:
    timing = read_json(latency)
    lat = timing["methods"]
    mac_of = {method: read_json(p) for method, p in zip(methods, macs)}
    # The MAC-ideal speedup, macs_total(none) / macs_total(method), bounds the measured one: macs_total
    # counts every op the denoiser runs (attention and the CFG batch included), so whatever a method
    # skips is in it, and the time outside the count (VAE, scheduler, Python, the method's own cache
    # bookkeeping) is at least as large for the method as for `none`, which only pulls the measured
    # ratio down towards 1. macs_c1 (linear/conv, one CFG branch) is not the work done: it leaves out
    # attention, which token-wise methods cut in another proportion than the linear layers (PixArt proxy:
    # ToCa's macs_c1 ratio 1.82, its macs_total ratio 2.07), so an honest timing could beat its ratio and
    # be flagged. Dynamic methods' MACs are their mean over real runs (dsbench/measure.py), an estimate.
    base_total = mac_of["none"]["macs_total"] if "none" in mac_of else math.nan
    rows = []
    for method, met_path in zip(methods, metrics):
        mac, met, t = mac_of[method], read_json(met_path), lat[method]
        ideal = base_total / mac["macs_total"] if mac.get("macs_total") else math.nan
        # Latency JSONs from before the Timer (median_s, min_s, repeats only) have no spread.
        lo, hi = t.get("speedup_lo", math.nan), t.get("speedup_hi", math.nan)
        rows.append({
            "model": model, "method": method, "num_steps": mac["num_steps"],
            "macs_c1_T": mac["macs_c1"] / TERA, "macs_total_T": mac["macs_total"] / TERA,
            "macs_c1_G": mac["macs_c1"] / GIGA,  # the CPU proxies' scale
            "macs_c1_M": mac["macs_c1"] / 1e6,   # the tiny random-weight models' scale
            # Counted from real runs: peers (block equivalents per denoiser call) and DiCache (full steps).
            "blocks_per_call": mac.get("blocks_computed_per_call", math.nan),
            "full_steps_mean": mac.get("full_steps_mean", math.nan),
            "latency_s": t["median_s"], "latency_q25_s": t.get("q25_s", math.nan),
            "latency_q75_s": t.get("q75_s", math.nan), "latency_runs": t.get("runs", t.get("repeats")),
            "latency_threads": timing.get("threads"),
            "speedup": t["speedup"], "speedup_lo": lo, "speedup_hi": hi, "speedup_ideal": ideal,
            "speedup_beyond_ideal": beyond_ideal(lo, ideal),
            "speedup_flag": speedup_flag(t["speedup"], lo, hi, ideal),
            **{k: met.get(k) for k in METRIC_KEYS},
            **provenance[method],
        })
    df = pd.DataFrame(rows)
    write_text(out, df.to_csv(index=False))
    return df
