"""The cost predictor and its straight-through estimator (the paper's §3.2, as we read it: no official
code is public).

Parameters: the layer costs C_l ∈ ℝ^{items×S} (items = (T−1)·blocks·sub-layers, in that order) and, for
stage 1, the step costs C_f ∈ ℝ^{(T−1)×2} (column 0: compute the step in full, 1: cache it). Neither
depends on the token count.

Estimator. Forward: the exact DP (dp.solve) on the row-normalised costs gives a hard choice h (one-hot
per item) that meets the budget exactly. Backward: h is replaced by h + p − stopgrad(p) with
p = softmax(−C/τ) per row, so ∂L/∂C = J_softmaxᵀ·∂L/∂h, and ∂L/∂h_{i,u} = Σ_j ∂L/∂γ_j·1[token j in
candidate u's top-k] comes from the engine's gated mixing (Engine.relax). Why this one: it keeps the
forward pass exactly the inference computation (the DP's choice, hard top-k) so training optimises
what will run, and the softmax of −C makes "lower cost ⇒ more likely chosen" consistent between the
gradient and the DP; the budget coupling between rows is left to the DP (a row-wise softmax ignores it,
a biased but low-variance choice, as straight-through estimators are).

Stage 1's step choice uses the same estimator on C_f with a step-level DP that picks exactly |T_f| full
steps. An item of a forced-full step has gate hf_full·e₀ + hf_cached·h_l, where h_l is its row's own
best candidate (what the step would do if cached), so C_f learns which steps to keep full.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from methods.diffsparse import dp


def straight_through(units: torch.Tensor, cost: torch.Tensor, tau: float) -> torch.Tensor:
    """one_hot(units) in the forward pass, the gradient of softmax(−cost/τ) in the backward pass."""
    p = torch.softmax(-cost / tau, dim=-1)
    hard = torch.nn.functional.one_hot(units, cost.shape[-1]).to(p.dtype)
    return hard + p - p.detach()


def normalized(cost: torch.Tensor) -> torch.Tensor:
    """Row-centred costs: only differences within a row and across rows matter to the DP."""
    return cost - cost.mean(-1, keepdim=True)


class CostPredictor(nn.Module):
    def __init__(self, steps: int, blocks: int, sublayers: int, candidates: int, tau: float = 1.0):
        super().__init__()
        if steps < 2:
            raise ValueError("DiffSparse needs at least 2 sampling steps (step 0 is always computed)")
        self.shape = (steps - 1, blocks, sublayers)
        self.items, self.S, self.tau = (steps - 1) * blocks * sublayers, candidates, tau
        self.layer_cost = nn.Parameter(torch.zeros(self.items, candidates))
        self.step_cost = nn.Parameter(torch.zeros(steps - 1, 2))

    # ---- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_units(self, units: torch.Tensor, beta: float = 1.0) -> None:
        """C_l[i, u] = β·|u − units_i|/(S−1): the DP's first answer is `units` (ToCa's rounded schedule)."""
        u = torch.arange(self.S, dtype=torch.float32)
        self.layer_cost.copy_(beta * (u - units.reshape(-1, 1).float()).abs() / (self.S - 1))

    @torch.no_grad()
    def init_steps(self, full: list[int], beta: float = 1.0) -> None:
        """C_f favours computing the steps in `full` (1-based step indices) in full, caching the rest."""
        self.step_cost.zero_()
        for t in range(self.shape[0]):
            self.step_cost[t, 1 if t + 1 in full else 0] = beta

    @torch.no_grad()
    def warm_start(self, full: list[int], delta: float) -> None:
        """Equation 9: C_l[(t, ·), s = 0] −= δ for every stage-1 full step t (makes full compute cheap there)."""
        rows = self.layer_cost.view(*self.shape, self.S)
        for t in full:
            rows[t - 1, :, :, 0] -= delta

    # ---- choices --------------------------------------------------------------------------------
    def full_steps(self, count: int) -> list[int]:
        """The |T_f| = count steps (1-based) the step-level DP computes in full."""
        if not 0 <= count <= self.shape[0]:
            raise ValueError(f"full_steps must be in [0, {self.shape[0]}], got {count}")
        c = normalized(self.step_cost.detach()).numpy()[:, ::-1]   # candidate 1 = full
        return [int(t) + 1 for t in np.flatnonzero(dp.solve(c, count))]

    def layer_units(self, budget: int, weights: np.ndarray | None = None, forced: list[int] = ()) -> torch.Tensor:
        """Hard units per item from the DP on C_l; items of `forced` steps take 0 and the rest meet the budget."""
        cost = normalized(self.layer_cost.detach()).numpy()
        units = np.zeros(self.items, dtype=np.int64)
        free = np.ones(self.shape, dtype=bool)
        for t in forced:
            free[t - 1] = False
        free = free.reshape(-1)
        w = None if weights is None else np.asarray(weights)[free]
        units[free] = dp.solve(cost[free], budget, w)
        return torch.from_numpy(units)

    def gates(self, budget: int, weights: np.ndarray | None = None, full_steps: int | None = None):
        """(gates (T−1, blocks, sub-layers, S) for Engine.relax, hard units, forced full steps)."""
        cost = normalized(self.layer_cost)
        forced = self.full_steps(full_steps) if full_steps else []
        units = self.layer_units(budget, weights, forced)
        h = straight_through(units, cost, self.tau)
        if forced:
            step = torch.zeros(self.shape[0], dtype=torch.int64)
            step[[t - 1 for t in forced]] = 1
            hf = straight_through(1 - step, normalized(self.step_cost), self.tau)   # columns [full, cached]
            own = straight_through(cost.detach().argmin(-1), cost, self.tau).view(*self.shape, self.S)
            full = torch.zeros(self.S)
            full[0] = 1
            h = h.view(*self.shape, self.S)
            f = hf[:, 0].view(-1, 1, 1, 1)
            mixed = f * full + hf[:, 1].view(-1, 1, 1, 1) * own
            is_forced = step.bool().view(-1, 1, 1, 1)
            h = torch.where(is_forced, mixed, h)   # layer_units already gave forced items candidate 0
        return h.view(*self.shape, self.S), units.view(self.shape), forced
