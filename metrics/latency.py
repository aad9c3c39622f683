"""Latency: wall time of one sampling batch per method, measured with torch.utils.benchmark.Timer.

All methods of a model are timed in one process on one pipeline, interleaved round by round, so a
speedup compares like with like (same device, same thermal state, same background load) and is never
quoted from elsewhere.

How a measurement is taken (:func:`time_interleaved`):

* one ``torch.utils.benchmark.Timer`` per method (``num_threads`` = the process's torch threads; the
  Timer's clock synchronises the accelerator, so GPU work is waited for);
* ``warmup`` untimed passes over all methods first (CUDA kernels, allocator, autotuning);
* then ``repeats`` rounds; in each round every method gets one ``Timer.blocked_autorange(min_run_time)``
  measurement. blocked_autorange sizes its own repeats: its block-size estimate is one untimed call
  (torch's own comment: "this also serves as a warmup", here it re-warms the caches the other methods
  just used), then it times blocks until ``min_run_time`` seconds are spent (one block at least), each
  block sized so the timer's overhead is negligible. Rounds, not one long measurement per method, so
  that a load that comes and goes (another job, a throttling clock) hits every method alike;
* a method's measurements of all rounds are merged (``Measurement.merge``) and reported as median,
  25/75 % quantiles (torch's linear-interpolation quantiles, as Measurement's IQR), IQR and the
  number of timed runs.

A speedup's spread comes from the quartiles: ``speedup_lo = q25(none) / q75(method)`` and
``speedup_hi = q75(none) / q25(method)`` (the slow end of the method against the fast end of `none`,
and the reverse).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.benchmark import Measurement, Timer


def quartiles(times: list[float]) -> tuple[float, float, float]:
    """(q25, median, q75) of `times`, by torch's linear interpolation, as Measurement computes them."""
    t = torch.tensor(sorted(times), dtype=torch.float64)
    return tuple(float(t.quantile(q)) for q in (0.25, 0.5, 0.75))  # type: ignore[return-value]


def summarize(measurements: list[Measurement]) -> dict:
    """The statistics stored per method over its measurements (one per round): median, quartiles, IQR,
    min, and how many per-run times (`samples`, one per timed block) and calls (`runs`) were timed."""
    merged = Measurement.merge(measurements)
    if len(merged) != 1:
        raise ValueError("measurements of more than one statement")
    times = list(merged[0].times)  # per call: each block's time over its calls
    q25, med, q75 = quartiles(times)
    return {"median_s": med, "q25_s": q25, "q75_s": q75, "iqr_s": q75 - q25, "min_s": min(times),
            "samples": len(times),  # runs equals samples where a block is one call (batches over ~10 ms)
            "runs": sum(len(m.raw_times) * m.number_per_run for m in measurements)}


def time_interleaved(runs: dict[str, Callable[[], object]], *, warmup: int = 0, repeats: int,
                     device: str | None = None, min_run_time: float = 0.0,
                     threads: int | None = None, progress: bool = True) -> dict[str, dict]:
    """`runs` maps a name to a zero-argument callable that samples one batch; returns per-name timings
    (:func:`summarize`) over `repeats` interleaved rounds of one blocked_autorange each (module doc).

    `device` is accepted for callers' symmetry: the Timer's clock synchronises any accelerator itself.
    `threads`: torch threads inside the Timer (default: the process's current setting)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    threads = threads or torch.get_num_threads()
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label="latency",
                          description=name) for name, fn in runs.items()}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    measured: dict[str, list[Measurement]] = {name: [] for name in runs}
    from tqdm import tqdm

    with tqdm(total=repeats * len(timers), desc="latency", unit="run", disable=not progress) as bar:
        for _ in range(repeats):
            for name, timer in timers.items():
                bar.set_postfix_str(name)
                measured[name].append(timer.blocked_autorange(min_run_time=min_run_time))
                bar.update()
    return {name: {**summarize(ms), "rounds": repeats, "threads": threads}
            for name, ms in measured.items()}


def speedups(timings: dict[str, dict], baseline: str = "none") -> dict[str, dict[str, float]]:
    """Per name: `speedup` (ratio of medians) and its spread `speedup_lo`/`speedup_hi` from the
    quartiles (module doc); a baseline timed once has no spread (lo = hi = speedup)."""
    b = timings[baseline]
    out = {}
    for name, t in timings.items():
        out[name] = {"speedup": b["median_s"] / t["median_s"],
                     "speedup_lo": b.get("q25_s", b["median_s"]) / t.get("q75_s", t["median_s"]),
                     "speedup_hi": b.get("q75_s", b["median_s"]) / t.get("q25_s", t["median_s"])}
    return out

