"""Search baselines for the DiffSparse allocation (paper appendix A.5.4): random search and a genetic
algorithm over budget-exact allocations, to compare against the learned cost + exact DP (dp.py).

Same conventions as dp.py: item i takes candidate u_i ∈ {0 … S−1} and Σ_i w_i·u_i = budget exactly
(integer w_i ≥ 1, default 1). The fitness is a black box `fitness(units) -> float`, lower is better,
and every call counts against the `evaluations` budget. NumPy only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from methods.diffsparse.dp import solve


def _weights(weights, items: int, S: int, budget: int) -> np.ndarray:
    """The weights (default 1) after checking them and that the budget lies in [0, Σ w·(S−1)]."""
    w = np.ones(items, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    if w.shape != (items,) or (w < 1).any():
        raise ValueError("weights must be one positive integer per item")
    if not 0 <= budget <= int(w.sum()) * (S - 1):
        raise ValueError(f"budget {budget} is outside the reachable [0, {int(w.sum()) * (S - 1)}]")
    return w


def repair(units, rng, S: int, budget: int, weights=None) -> np.ndarray:
    """A copy of `units` (clipped to [0, S−1]) moved one unit at a time, on randomly chosen items, until
    Σ w·u == budget exactly. All weights 1: one vectorised draw of the unit slots to add or remove.
    Otherwise a random walk preferring moves that shrink the gap; if it stalls (a parity trap), the
    closest allocation by L1 from dp.solve. ValueError when the budget is unreachable."""
    rng = np.random.default_rng(rng)
    u = np.clip(np.array(units, dtype=np.int64).reshape(-1), 0, S - 1)
    n = len(u)
    w = _weights(weights, n, S, budget)
    gap = int(w @ u) - budget
    if gap == 0:
        return u
    if (w == 1).all():
        room = u if gap > 0 else S - 1 - u              # unit slots that may move in the needed direction
        slots = np.repeat(np.arange(n), room)
        moved = np.bincount(slots[rng.choice(len(slots), abs(gap), replace=False)], minlength=n)
        return u - np.sign(gap) * moved
    for _ in range(2 * abs(gap) + 8 * n + 64):
        if gap == 0:
            return u
        step = -1 if gap > 0 else 1
        movable = (u > 0) if step < 0 else (u < S - 1)
        good = np.flatnonzero(movable & (w < 2 * abs(gap)))   # moves that shrink |gap|
        if good.size:
            i = int(rng.choice(good))
        else:                                               # stuck: any in-range move, either way
            i = int(rng.integers(n))
            step = int(rng.choice([s for s in (-1, 1) if 0 <= u[i] + s <= S - 1] or [0]))
        u[i] += step
        gap += step * int(w[i])
    if gap == 0:
        return u
    cost = np.abs(np.arange(S)[None, :] - u[:, None]) + rng.random((n, S)) * (0.5 / n)
    return solve(cost, budget, w)                          # raises ValueError when unreachable


def random_allocation(rng, items: int, S: int, budget: int, weights=None) -> np.ndarray:
    """A random feasible allocation (int64, (items,)): u_i ~ Binomial(S−1, p) with p chosen so that
    E[Σ w·u] = budget, then `repair` to the exact budget."""
    rng = np.random.default_rng(rng)
    w = _weights(weights, items, S, budget)
    top = int(w.sum()) * (S - 1)
    p = budget / top if top else 0.0
    return repair(rng.binomial(S - 1, p, items), rng, S, budget, w)


TOURNAMENT = 3  # parent selection: best of this many random individuals


@dataclass
class SearchResult:
    units: np.ndarray                   # best allocation found
    fitness: float                      # its fitness (lower is better)
    evaluations: int                    # fitness calls made
    seconds: float                      # wall time
    history: list[float] = field(default_factory=list)   # best-so-far after each evaluation


def _check(items: int, S: int, budget: int, evaluations: int, weights) -> np.ndarray:
    if items < 1 or S < 1:
        raise ValueError(f"need items >= 1 and S >= 1, got {items}, {S}")
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    w = _weights(weights, items, S, budget)
    if not (w == 1).all():
        solve(np.zeros((items, S)), budget, w)          # exact reachability; raises ValueError
    return w


class _Tracker:
    """Wraps the fitness: counts calls, keeps the best allocation and the best-so-far history."""

    def __init__(self, fitness):
        self.fitness, self.best, self.history = fitness, (None, np.inf), []

    def __call__(self, u: np.ndarray) -> float:
        f = float(self.fitness(u.copy()))
        f = np.inf if np.isnan(f) else f                # a failed evaluation ranks last
        if self.best[0] is None or f < self.best[1]:
            self.best = (u.copy(), f)
        self.history.append(self.best[1])
        return f

    def result(self, t0: float) -> SearchResult:
        return SearchResult(*self.best, len(self.history), time.perf_counter() - t0, self.history)


def random_search(fitness, items: int, S: int, budget: int, evaluations: int, seed: int = 0,
                  weights=None) -> SearchResult:
    """Best of `evaluations` random feasible allocations."""
    t0 = time.perf_counter()
    w = _check(items, S, budget, evaluations, weights)
    rng, track = np.random.default_rng(seed), _Tracker(fitness)
    for _ in range(evaluations):
        track(random_allocation(rng, items, S, budget, w))
    return track.result(t0)


def genetic_search(fitness, items: int, S: int, budget: int, evaluations: int, population: int = 50,
                   mutation: float = 0.01, seed: int = 0, weights=None, elite: int = 2,
                   init=None) -> SearchResult:
    """Generational GA: tournaments of TOURNAMENT pick parents, uniform crossover, per-item mutation to a
    random unit, `repair` to the exact budget, the `elite` best carried over. The population starts
    from `init` (repaired) topped up with random allocations. An allocation already evaluated reuses
    its cached fitness (no call); the search stops after `evaluations` calls, or after 20·evaluations
    children (a converged population breeds only cached ones)."""
    t0 = time.perf_counter()
    w = _check(items, S, budget, evaluations, weights)
    if population < 2:
        raise ValueError(f"population must be >= 2, got {population}")
    if not 0.0 <= mutation <= 1.0:
        raise ValueError(f"mutation must lie in [0, 1], got {mutation}")
    if not 0 <= elite < population:
        raise ValueError(f"elite must lie in [0, population), got {elite}")
    seeds = np.empty((0, items), dtype=np.int64) if init is None else np.asarray(init, dtype=np.int64)
    seeds = seeds.reshape(1, -1) if seeds.ndim == 1 else seeds
    if seeds.ndim != 2 or seeds.shape[1] != items or (seeds < 0).any() or (seeds >= S).any():
        raise ValueError(f"init must be allocations of shape (k, {items}) with units in [0, {S - 1}]")
    rng, track, cache = np.random.default_rng(seed), _Tracker(fitness), {}

    def score(u: np.ndarray) -> float:
        key = u.tobytes()
        if key not in cache:
            cache[key] = track(u)
        return cache[key]

    def pick() -> np.ndarray:
        c = rng.integers(len(pop), size=TOURNAMENT)
        return pop[c[np.argmin([fit[k] for k in c])]]

    pop = [repair(s, rng, S, budget, w) for s in seeds[:population]]
    pop += [random_allocation(rng, items, S, budget, w) for _ in range(population - len(pop))]
    pop = pop[:evaluations]                             # fewer calls than a population: evaluate a prefix
    fit = [score(u) for u in pop]
    children, cap = 0, 20 * evaluations
    while len(track.history) < evaluations and children < cap:
        order = np.argsort(fit, kind="stable")
        new, new_fit = [pop[i] for i in order[:elite]], [fit[i] for i in order[:elite]]
        while len(new) < population and len(track.history) < evaluations and children < cap:
            child = np.where(rng.random(items) < 0.5, pick(), pick())
            hit = rng.random(items) < mutation
            child[hit] = rng.integers(0, S, int(hit.sum()))
            new.append(repair(child, rng, S, budget, w))
            new_fit.append(score(new[-1]))
            children += 1
        pop, fit = new, new_fit
    return track.result(t0)
