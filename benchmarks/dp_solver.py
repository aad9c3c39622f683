"""Time DiffSparse's DP allocation at the paper's size: T = 20 steps (19 items each), PixArt's L = 84
sub-layers, |S| = 5 candidates, R = 0.43. Goal: <= 0.05 s on one CPU core. Prints the median of runs.

    OMP_NUM_THREADS=1 python benchmarks/dp_solver.py
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from methods.diffsparse.dp import budget_units, solve


def main(repeats: int = 15) -> None:
    items, S, R = 19 * 84, 5, 0.43
    cost = np.random.default_rng(0).normal(size=(items, S))
    budget = budget_units(items, S, R)
    solve(cost, budget)                                  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        u = solve(cost, budget)
        times.append(time.perf_counter() - t)
    assert u.sum() == budget
    med = statistics.median(times)
    print(f"DP T=19 x L=84 items={items} |S|={S} R={R} budget={budget} units: median {med * 1e3:.1f} ms "
          f"over {repeats} runs (goal 50 ms: {med / 0.05:.2f}x of it)")


if __name__ == "__main__":
    main()
