"""Latency: median wall time of one sampling batch after warm-up, synchronised on GPU.

All methods of a model are timed in one process on one pipeline, interleaved round by round, so a
speedup compares like with like (same device, same thermal state) and is never quoted from elsewhere.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def time_interleaved(runs: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                     device: str) -> dict[str, dict]:
    """`runs` maps a name to a zero-argument callable that samples one batch; returns per-name timings."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts)}
            for name, ts in times.items()}


def speedups(timings: dict[str, dict], baseline: str = "none") -> dict[str, float]:
    base = timings[baseline]["median_s"]
    return {name: base / t["median_s"] for name, t in timings.items()}
