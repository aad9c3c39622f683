"""The exact budgeted allocation of DiffSparse (paper eq. 6-7): one candidate per item, minimum total cost.

Items are (step, sub-layer) pairs; candidate u ∈ {0 … S−1} is u grid units of sparsity (u/(S−1) of the
item's tokens reused). The budget asks Σ_i w_i·u_i = B exactly, with w_i = 1 for the paper's budget
(mean sparsity R over items) or small integer MAC weights for the MAC budget. Solved by dynamic
programming over the budget axis with backtracking:

    F(i, r) = min_u F(i−1, r − w_i·u) + C[i, u]

By hand because no library offers a multiple-choice knapsack with an exact equality budget. Fast in
NumPy because each row is one vectorised min over the S shifted copies of the previous row, restricted
to the budgets still reachable at that row. Ties prefer the smaller sparsity (more compute), so the
answer is deterministic.
"""
from __future__ import annotations

import numpy as np


def budget_units(items: int, candidates: int, ratio: float) -> int:
    """round(R · items · (S − 1)): the paper's budget in grid units (mean sparsity R over items)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sparsity ratio must lie in [0, 1], got {ratio}")
    return int(round(ratio * items * (candidates - 1)))


GROUP = 4  # rows pre-combined per DP stage: fewer NumPy calls, the same optimum


def _combine(cost: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Min-plus combination of the m rows of each group: (G, m, S) costs -> (G, m(S-1)+1) costs of the
    group's total units, and per member an argmin table to split a total back into the members' units."""
    G, m, S = cost.shape
    comb, splits = cost[:, 0, :], []
    for j in range(1, m):
        K = comb.shape[1]
        options = np.full((G, K + S - 1, S), np.inf)    # [group, new total, member j's u]
        for u in range(S):
            options[:, u:u + K, u] = comb + cost[:, j, u:u + 1]
        arg = options.argmin(axis=2)                    # first minimum: member j's smaller u on ties
        comb = np.take_along_axis(options, arg[..., None], 2)[..., 0]
        splits.append(arg)
    return comb, splits


def _split(total: np.ndarray, splits: list[np.ndarray]) -> np.ndarray:
    """Members' units from each group's total (inverse of _combine)."""
    units = []
    for arg in reversed(splits):
        u = arg[np.arange(len(total)), total]
        units.append(u)
        total = total - u
    units.append(total)
    return np.stack(units[::-1], axis=1)


def solve(cost: np.ndarray, budget: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Candidate index per row (int64, shape (items,)) minimising Σ cost[i, u_i] with Σ w_i·u_i = budget.

    cost: (items, S) finite floats. weights: positive ints per row (default 1). Raises ValueError when
    no allocation meets the budget exactly.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise ValueError(f"cost must be (items, candidates), got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost must be finite")
    n, S = cost.shape
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    if w.shape != (n,) or (w < 1).any():
        raise ValueError("weights must be one positive integer per item")
    if not 0 <= budget <= int((w * (S - 1)).sum()):
        raise ValueError(f"budget {budget} is outside the reachable [0, {int((w * (S - 1)).sum())}]")
    # Rows of equal weight are pre-combined GROUP at a time (the row order does not change the optimum).
    order = np.argsort(w, kind="stable")
    stages = []                                         # (row indices, stage cost (K,), splits)
    for wv in np.unique(w):
        rows = order[w[order] == wv]
        full = len(rows) // GROUP * GROUP
        for chunk in (rows[:full].reshape(-1, GROUP), rows[full:].reshape(1, -1)):
            if chunk.size:
                comb, splits = _combine(cost[chunk])
                stages += [(chunk[g], comb[g], [a[g:g + 1] for a in splits]) for g in range(len(chunk))]
    stage_units = _dp([c for _, c, _ in stages], [int(w[r[0]]) for r, _, _ in stages], budget)
    out = np.empty(n, dtype=np.int64)
    for (rows, _, splits), k in zip(stages, stage_units):
        out[rows] = _split(np.array([k]), splits)[0]
    return out


def _dp(costs: list[np.ndarray], weights: list[int], budget: int) -> list[int]:
    """The DP over stages: stage i takes k ∈ [0, len(costs[i])) units at weight weights[i] each."""
    n = len(costs)
    span = np.array([w * (len(c) - 1) for c, w in zip(costs, weights)], dtype=np.int64)
    after = np.concatenate([np.cumsum(span[::-1])[::-1][1:], [0]])   # what stages i+1.. can still add
    hi = np.minimum(np.cumsum(span), budget)
    lo = np.maximum(budget - after, 0)
    if (lo > hi).any():
        raise ValueError(f"budget {budget} is unreachable")
    # F over every budget, padded with +inf on the left so the shifted reads r − w·u never go negative.
    pad = int(span.max())
    F = np.full(pad + budget + 1, np.inf)
    F[pad] = 0.0                                        # F(-1, 0) = 0
    choice = []                                         # per row: (lo, argmin over u) for backtracking
    pa, pb = pad, pad + 1                               # the finite window of F
    for i in range(n):
        a, b = pad + int(lo[i]), pad + int(hi[i]) + 1
        shifted = np.stack([F[a - weights[i] * k:b - weights[i] * k] for k in range(len(costs[i]))]) \
            + costs[i][:, None]
        arg = shifted.argmin(axis=0)                    # first minimum: the smaller u on ties
        F[pa:pb] = np.inf                               # only this row's reachable window stays finite
        F[a:b] = shifted.min(axis=0)
        pa, pb = a, b
        choice.append((lo[i], arg.astype(np.int16)))
    if not np.isfinite(F[pad + budget]):
        raise ValueError(f"budget {budget} is unreachable")
    out, r = [0] * n, budget
    for i in range(n - 1, -1, -1):
        row_lo, arg = choice[i]
        out[i] = int(arg[r - row_lo])
        r -= out[i] * weights[i]
    assert r == 0
    return out
