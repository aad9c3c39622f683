"""One model cell's results: per-method MACs, latency and quality merged into results/{model}.csv."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dsbench.io import read_json, write_text

TERA, GIGA = 1e12, 1e9
# Scalars of a cell's metrics JSON (dsbench/evaluate.py) carried into the model's CSV; absent ones are empty.
METRIC_KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "clip", "clip_x100", "clip_toca", "align", "image_reward",
               "vbench", "vbench_quality", "vbench_semantic", "psnr", "ssim", "lpips", "n_samples", "fid_n_ref")


def aggregate(model: str, methods: list[str], macs: list[Path], metrics: list[Path], latency: Path,
              provenance: dict[str, dict], out: Path) -> pd.DataFrame:
    lat = read_json(latency)["methods"]
    rows = []
    for method, mac_path, met_path in zip(methods, macs, metrics):
        mac, met = read_json(mac_path), read_json(met_path)
        rows.append({
            "model": model, "method": method, "num_steps": mac["num_steps"],
            "macs_c1_T": mac["macs_c1"] / TERA, "macs_total_T": mac["macs_total"] / TERA,
            "macs_c1_G": mac["macs_c1"] / GIGA,  # the CPU proxies' scale
            "latency_s": lat[method]["median_s"], "speedup": lat[method]["speedup"],
            **{k: met.get(k) for k in METRIC_KEYS},
            **provenance[method],
        })
    df = pd.DataFrame(rows)
    write_text(out, df.to_csv(index=False))
    return df
