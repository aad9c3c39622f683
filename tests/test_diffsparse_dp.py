"""DiffSparse's DP allocation (methods/diffsparse/dp.py) against brute force, and its budget contract."""
import itertools

import numpy as np
import pytest

from methods.diffsparse.dp import budget_units, solve


def brute_force(cost, budget, weights):
    best, best_u = np.inf, None
    for u in itertools.product(range(cost.shape[1]), repeat=cost.shape[0]):
        if sum(wi * ui for wi, ui in zip(weights, u)) == budget:
            c = sum(cost[i, ui] for i, ui in enumerate(u))
            if c < best - 1e-12:
                best, best_u = c, u
    return best, best_u


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_brute_force_on_random_small_instances(seed):
    rng = np.random.default_rng(seed)
    n, S = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    weights = rng.integers(1, 4, n) if seed % 2 else np.ones(n, dtype=int)
    cost = rng.normal(size=(n, S))
    if seed % 5 == 0:
        cost = rng.integers(0, 3, size=(n, S)).astype(float)       # many ties
    budget = int(rng.integers(0, int(weights.sum()) * (S - 1) + 1))
    want, _ = brute_force(cost, budget, weights)
    if not np.isfinite(want):
        with pytest.raises(ValueError, match="unreachable"):
            solve(cost, budget, weights)
        return
    u = solve(cost, budget, weights)
    assert int((u * weights).sum()) == budget                       # meets the budget exactly
    assert cost[np.arange(n), u].sum() == pytest.approx(want, abs=1e-9)


def test_dp_paper_sized_instance_meets_the_budget_and_prefers_compute_on_ties():
    items, S = 19 * 84, 5
    budget = budget_units(items, S, 0.43)
    assert budget == round(0.43 * items * 4)
    u = solve(np.random.default_rng(0).normal(size=(items, S)), budget)
    assert u.sum() == budget and u.min() >= 0 and u.max() <= S - 1
    flat = solve(np.zeros((items, S)), budget)                     # all ties: deterministic answer
    assert flat.sum() == budget
    np.testing.assert_array_equal(flat, solve(np.zeros((items, S)), budget))


def test_dp_rejects_bad_input():
    with pytest.raises(ValueError, match="outside the reachable"):
        solve(np.zeros((3, 5)), 13)
    with pytest.raises(ValueError, match="finite"):
        solve(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="one positive integer per item"):
        solve(np.zeros((2, 3)), 1, weights=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        budget_units(10, 5, 1.2)
    with pytest.raises(ValueError, match="unreachable"):
        solve(np.zeros((2, 2)), 1, weights=np.array([2, 2]))      # only even budgets are reachable
