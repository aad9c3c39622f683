"""The search baselines of DiffSparse A.5.4 (methods/diffsparse/search.py): every allocation meets the
budget exactly, the evaluation budget is counted exactly, runs are seeded, and the GA gets close to
the exact DP optimum on a separable toy problem (and beats random search)."""
import numpy as np
import pytest

from methods.diffsparse.dp import budget_units, solve
from methods.diffsparse.search import (SearchResult, genetic_search, random_allocation, random_search,
                                       repair)


def feasible(u, S, budget, weights=None):
    u = np.asarray(u)
    w = np.ones(len(u), dtype=np.int64) if weights is None else np.asarray(weights)
    return u.dtype == np.int64 and u.min() >= 0 and u.max() <= S - 1 and int(w @ u) == budget


class Recorder:
    """A separable fitness Σ cost[i, u_i] that records every argument it is called with."""

    def __init__(self, cost):
        self.cost, self.calls = cost, []

    def __call__(self, u):
        self.calls.append(np.array(u))
        return float(self.cost[np.arange(len(u)), u].sum())


def toy(seed, items=30, S=5):
    return np.random.default_rng(seed).normal(size=(items, S))


@pytest.mark.parametrize("weighted", [False, True])
def test_random_allocation_meets_every_budget_exactly(weighted):
    rng = np.random.default_rng(0)
    items, S = 40, 5
    w = rng.integers(1, 4, items) if weighted else None
    top = (items if w is None else int(w.sum())) * (S - 1)
    for budget in [0, 1, 7, top // 3, top // 2, top - 1, top]:
        for _ in range(5):
            u = random_allocation(rng, items, S, budget, w)
            assert u.shape == (items,) and feasible(u, S, budget, w)


def test_random_allocation_is_spread_not_constant():
    rng = np.random.default_rng(1)
    draws = np.stack([random_allocation(rng, 20, 5, 40) for _ in range(200)])
    assert len({d.tobytes() for d in draws}) == 200
    assert set(np.unique(draws)) == {0, 1, 2, 3, 4}


def test_repair_all_ones_is_exact_from_any_start_and_keeps_feasible_inputs():
    rng = np.random.default_rng(2)
    for _ in range(50):
        items, S = int(rng.integers(1, 50)), int(rng.integers(1, 7))
        budget = int(rng.integers(0, items * (S - 1) + 1))
        start = rng.integers(0, S, items)
        before = start.copy()
        u = repair(start, rng, S, budget)
        assert feasible(u, S, budget)
        np.testing.assert_array_equal(start, before)                 # the input is not modified
        # one-unit moves in a single direction: no item moves against the needed direction
        assert (np.sign(u - start) * np.sign(budget - start.sum()) >= 0).all()
        assert np.abs(u - start).sum() == abs(budget - start.sum())  # the fewest unit moves
    ok = random_allocation(rng, 30, 5, 60)
    np.testing.assert_array_equal(repair(ok, rng, 5, 60), ok)


def test_repair_with_weights_succeeds_exactly_when_the_budget_is_reachable():
    rng = np.random.default_rng(3)
    for trial in range(200):
        items, S = int(rng.integers(1, 7)), int(rng.integers(2, 4))
        w = rng.choice([1, 2, 3], items) if trial % 2 else rng.choice([2, 4, 6], items)
        budget = int(rng.integers(0, int(w.sum()) * (S - 1) + 1))
        try:
            solve(np.zeros((items, S)), budget, w)
            reachable = True
        except ValueError:
            reachable = False
        start = rng.integers(0, S, items)
        if reachable:
            assert feasible(repair(start, rng, S, budget, w), S, budget, w)
        else:
            with pytest.raises(ValueError):
                repair(start, rng, S, budget, w)


def test_repair_escapes_parity_traps():
    # weight-2 items plus one weight-1 item: an odd budget needs the weight-1 item at an odd unit,
    # which greedy gap-shrinking moves alone may never reach.
    w = np.array([2] * 10 + [1])
    rng = np.random.default_rng(4)
    for budget in (1, 3, 17, 41):
        for _ in range(20):
            start = rng.integers(0, 3, 11)
            start[-1] = 0
            u = repair(start, rng, 3, budget, w)
            assert feasible(u, 3, budget, w) and u[-1] == 1


@pytest.mark.parametrize("weighted", [False, True])
def test_every_individual_the_ga_evaluates_meets_the_budget(weighted):
    items, S = 30, 5
    w = np.random.default_rng(5).integers(1, 4, items) if weighted else None
    budget = budget_units(items, S, 0.5) if w is None else int(w.sum()) * (S - 1) // 2 + 1
    fit = Recorder(toy(5))
    res = genetic_search(fit, items, S, budget, 600, population=20, mutation=0.05, seed=1, weights=w)
    assert len(fit.calls) == res.evaluations == 600 == len(res.history)
    assert all(feasible(u, S, budget, w) for u in fit.calls)
    assert len({u.tobytes() for u in fit.calls}) == 600                # cached: never re-evaluated
    assert feasible(res.units, S, budget, w)
    values = [fit.cost[np.arange(items), u].sum() for u in fit.calls]
    assert res.fitness == min(values) == fit.cost[np.arange(items), res.units].sum()
    assert all(a >= b for a, b in zip(res.history, res.history[1:]))  # best-so-far never worsens
    assert res.history[-1] == res.fitness and res.seconds > 0


@pytest.mark.parametrize("weighted", [False, True])
def test_random_search_counts_calls_and_keeps_the_best(weighted):
    items, S = 25, 4
    w = np.random.default_rng(6).integers(1, 4, items) if weighted else None
    budget = budget_units(items, S, 0.3) if w is None else int(w.sum())
    fit = Recorder(toy(6, items, S))
    res = random_search(fit, items, S, budget, 137, seed=2, weights=w)
    assert isinstance(res, SearchResult)
    assert len(fit.calls) == res.evaluations == 137 == len(res.history)
    assert all(feasible(u, S, budget, w) for u in fit.calls)
    values = [fit.cost[np.arange(items), u].sum() for u in fit.calls]
    assert res.fitness == min(values) and res.history == list(np.minimum.accumulate(values))
    np.testing.assert_array_equal(res.units, fit.calls[int(np.argmin(values))])


def test_searches_are_deterministic_for_a_seed():
    cost, B = toy(7), budget_units(30, 5, 0.5)
    for search in (random_search, genetic_search):
        a, b, c = (search(Recorder(cost), 30, 5, B, 300, seed=s) for s in (3, 3, 4))
        np.testing.assert_array_equal(a.units, b.units)
        assert a.fitness == b.fitness and a.history == b.history
        assert a.history != c.history


def test_ga_evaluations_below_the_population_are_counted_exactly():
    fit = Recorder(toy(8))
    res = genetic_search(fit, 30, 5, 60, 7)                     # population 50 > 7 evaluations
    assert len(fit.calls) == res.evaluations == 7


def test_ga_approaches_the_dp_optimum_and_beats_random_search():
    items, S = 30, 5
    B = budget_units(items, S, 0.5)
    for seed in range(3):
        cost = toy(100 + seed, items, S)
        opt = cost[np.arange(items), solve(cost, B)].sum()
        ga = genetic_search(Recorder(cost), items, S, B, 3000, seed=seed)   # paper's 50 / 0.01
        rs = random_search(Recorder(cost), items, S, B, 3000, seed=seed)
        assert ga.evaluations == rs.evaluations == 3000
        assert ga.fitness >= opt - 1e-9                         # the DP is exact
        assert ga.fitness - opt <= 0.1 * abs(opt)               # within 10% of the optimum
        assert ga.fitness - opt <= 0.25 * (rs.fitness - opt)    # far closer than random search


def test_ga_keeps_a_seeded_initial_allocation():
    cost, B = toy(9), budget_units(30, 5, 0.5)
    best = solve(cost, B)
    fit = Recorder(cost)
    res = genetic_search(fit, 30, 5, B, 200, seed=0, init=[best])
    np.testing.assert_array_equal(fit.calls[0], best)          # evaluated first, unchanged
    np.testing.assert_array_equal(res.units, best)             # elitism: never lost
    off = best.copy()
    off[0] = (off[0] + 1) % 5                                   # off-budget init (e.g. ToCa's): repaired
    fit = Recorder(cost)
    genetic_search(fit, 30, 5, B, 10, seed=0, init=off)
    assert feasible(fit.calls[0], 5, B)


@pytest.mark.parametrize("kwargs, match", [
    (dict(evaluations=0), "evaluations"),
    (dict(population=1), "population"),
    (dict(mutation=-0.1), "mutation"),
    (dict(mutation=1.5), "mutation"),
    (dict(elite=50), "elite"),
    (dict(budget=121), "outside"),
    (dict(budget=-1), "outside"),
    (dict(weights=np.full(30, 2), budget=61), "unreachable"),
    (dict(weights=np.zeros(30)), "weights"),
    (dict(init=np.zeros((2, 29), dtype=int)), "init"),
    (dict(init=np.full((1, 30), 5)), "init"),
])
def test_invalid_arguments_raise(kwargs, match):
    args = dict(fitness=Recorder(toy(10)), items=30, S=5, budget=60, evaluations=10) | kwargs
    with pytest.raises(ValueError, match=match):
        genetic_search(**args)
    if not {"population", "mutation", "elite", "init"} & set(kwargs):
        with pytest.raises(ValueError, match=match):
            random_search(**args)
    with pytest.raises(ValueError, match="outside"):
        random_allocation(0, 30, 5, 121)
    with pytest.raises(ValueError, match="outside"):
        repair(np.zeros(30, dtype=int), 0, 5, -1)
