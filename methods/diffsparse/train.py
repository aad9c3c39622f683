"""DiffSparse training (Algorithm 1): distil the unaccelerated teacher's final image into the cost matrix.

Per iteration: a batch of conditions and noise seeds; the teacher samples under no_grad (the full plan);
the student samples the same noise and conditions through the real pipeline with the engine in gated
mode (Engine.relax), the DP's hard choice in the forward pass and the straight-through soft assignment
in the backward pass (relax.py); loss = LPIPS (or L2 / SSIM, Table 6) between the final images, whose
gradient reaches the costs only (the model is frozen). Stage 1 trains C_l and the step costs C_f with
|T_f| forced full steps; the warm start subtracts δ at those steps; stage 2 fine-tunes C_l alone.
Everything is deterministic from the settings' seed and resumable from the last checkpoint.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from methods.base import Layout
from methods.diffsparse import dp
from methods.diffsparse.items import item_shape, join, split
from methods.diffsparse.method import DiffSparse
from methods.diffsparse.relax import CostPredictor
from methods.diffsparse.schedule import Schedule, keep_fractions
from methods.diffsparse.train_settings import TrainSettings
from methods.plan import Plan
from methods.schedules import toca_full_steps
from methods.toca import partial_ratios

log = logging.getLogger(__name__)


# ---- the pieces Algorithm 1 starts from ------------------------------------------------------------
def toca_units(method: DiffSparse, layout: Layout, num_steps: int) -> tuple[torch.Tensor, list[int]]:
    """ToCa's schedule on the candidate grid: (units of its partial steps (T−1, blocks, sub-layers),
    its full steps after step 0). Stage 1 starts from both; single-stage from the two merged."""
    c, S = method.toca, len(keep_fractions(method.config.interval))
    ratios = join([torch.stack([partial_ratios(c, s, num_steps, g, layout.clock) for s in range(1, num_steps)])
                   for g in layout.groups])
    units = ((1 - ratios) / method.config.interval).round().long().clamp(0, S - 1)
    full = sorted(s for s in toca_full_steps(c.threshold, num_steps, c.constants, layout.clock) if s > 0)
    return units, full


def token_mac_weights(adapter, pipe) -> np.ndarray:
    """Items-shaped (see items.py) small integer weights ∝ each sub-layer's per-token linear MACs (its
    Linear layers other than those that see the whole key sequence whatever the token count)."""
    parts = []
    for group in adapter.groups:
        costs = []
        for block in adapter.group_blocks(pipe, group):
            row = []
            for sub in group.sublayers:
                owned = [block.get_submodule(o) for o in sub.owns] if sub.owns else [adapter.sublayer(block, sub.name)]
                row.append(sum(m.in_features * m.out_features for mod in owned for n, m in mod.named_modules()
                               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in sub.full_modules))
            costs.append(row)
        parts.append(torch.tensor(costs, dtype=torch.float64).unsqueeze(0))
    c = join(parts)[0].numpy()
    return np.maximum(1, np.round(c / c.min())).astype(np.int64)


def budget(method: DiffSparse, items: int, S: int, weights: np.ndarray | None) -> int:
    """Budget in grid units: round(R·items·(S−1)) (the paper's), or the MAC-weighted round(R·Σw·(S−1))."""
    if weights is None:
        return dp.budget_units(items, S, method.config.ratio)
    return int(round(method.config.ratio * int(weights.sum()) * (S - 1)))


def make_loss(name: str, lpips_net: torch.nn.Module | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-image distance of images in [-1, 1] (LPIPS's contract)."""
    if name == "lpips":
        if lpips_net is None:
            raise ValueError("loss 'lpips' needs an LPIPS network (metrics.lpips_network)")
        return lambda a, b: lpips_net(a, b).reshape(len(a))
    if name == "l2":
        return lambda a, b: ((a - b) ** 2).mean((1, 2, 3))
    if name == "ssim":
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        return lambda a, b: 1 - ssim(b, a, data_range=2.0, reduction="none")
    raise ValueError(f"unknown loss {name!r}")


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Videos (N, frames, C, H, W) as N·frames images: the image losses then apply frame by frame."""
    return x.flatten(0, 1) if x.ndim == 5 else x


# ---- the trainer -----------------------------------------------------------------------------------

def load_checkpoint(path: Path) -> dict:
    """A training checkpoint: tensors and plain data only (weights_only=True never runs code from the file)."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"refusing checkpoint {path}: it is not a plain tensor checkpoint ({first}); "
                         "delete it to start training over") from None

class Trainer:
    def __init__(self, adapter, pipe, method: DiffSparse, *, conditions: Sequence, num_steps: int,
                 guidance_scale: float, lpips_net=None, meta: dict | None = None):
        from methods.engine import Engine

        self.adapter, self.pipe, self.method, self.T, self.g = adapter, pipe, method, num_steps, guidance_scale
        self.s: TrainSettings = method.settings
        if len(conditions) < self.s.batch_size:
            raise ValueError(f"{len(conditions)} training conditions for a batch of {self.s.batch_size}")
        self.conditions = list(conditions)
        self.layout = adapter.layout(pipe)
        self.keep = keep_fractions(method.config.interval)
        S = len(self.keep)
        self.predictor = CostPredictor(num_steps, *item_shape(self.layout.groups), S, self.s.tau)
        self.weights = None
        if method.config.budget == "macs":
            w = token_mac_weights(adapter, pipe)
            self.weights = np.broadcast_to(w, (num_steps - 1, *w.shape)).reshape(-1).copy()
        self.budget = budget(method, self.predictor.items, S, self.weights)
        self.toca, self.toca_full = toca_units(method, self.layout, num_steps)
        self.full_count = len(self.toca_full) if self.s.full_steps is None else self.s.full_steps
        self.loss_fn = make_loss(self.s.loss, lpips_net)
        self.engine = Engine(adapter, pipe, Plan.full(num_steps, self.layout),
                             method.ranking(), **adapter.engine_cfg(guidance_scale))
        self.meta = dict(meta or {})
        self.log: list[dict] = []

    def relax(self, gates: torch.Tensor | None, checkpoint: bool = True) -> None:
        """The engine in gated mode for items-shaped gates (T−1, *item_shape, S), or back with None."""
        self.engine.relax(None if gates is None else split(gates, self.layout.groups), self.keep, checkpoint)

    # One identity for checkpoints: resuming under other settings would mix two runs.
    def fingerprint(self) -> dict:
        return {"settings": asdict(self.s), "ratio": self.method.config.ratio, "budget": self.method.config.budget,
                "interval": self.method.config.interval, "toca": self.method.config.toca, "steps": self.T,
                "layout": _layout_id(self.layout), "guidance": self.g,
                "model": self.meta.get("model")}

    def initialise(self) -> None:
        p, beta = self.predictor, self.s.init_beta
        if self.s.two_stage:
            p.init_from_units(self.toca, beta)
            p.init_steps(self.toca_full, beta)
        else:
            merged = self.toca.clone()
            merged[[t - 1 for t in self.toca_full]] = 0
            p.init_from_units(merged, beta)

    def stages(self) -> list[tuple[int, int]]:
        """[(stage, iterations)]: 1 then 2 for two-stage training, only 2 (no forced steps) for single-stage."""
        if self.s.two_stage:
            return [(1, self.s.iterations(self.s.epochs_stage1)), (2, self.s.iterations(self.s.epochs_stage2))]
        return [(2, self.s.iterations(self.s.epochs_stage1 + self.s.epochs_stage2))]

    def optimizer(self, stage: int) -> torch.optim.Optimizer:
        # No weight decay: it would pull every cost toward the uniform allocation.
        p = self.predictor
        if stage == 1:
            groups = [{"params": [p.layer_cost], "lr": self.s.lr_layer}, {"params": [p.step_cost], "lr": self.s.lr_step}]
        else:
            groups = [{"params": [p.layer_cost], "lr": self.s.lr_stage2 if self.s.two_stage else self.s.lr_layer}]
        return torch.optim.AdamW(groups, weight_decay=0.0)

    def batch(self, stage: int, it: int) -> tuple[list, list[int]]:
        from dsbench.samples import sample_seed

        per_epoch = max(1, len(self.conditions) // self.s.batch_size)
        epoch, k = divmod(it, per_epoch)
        order = np.random.default_rng([self.s.seed, stage, epoch]).permutation(len(self.conditions))
        idx = order[k * self.s.batch_size:(k + 1) * self.s.batch_size].tolist()
        # Training noise has its own seed stream: never the evaluation samples' noise.
        return [self.conditions[i] for i in idx], [sample_seed(10_000 + self.s.seed, stage * 10**7 + it * 1000 + j)
                                                   for j in range(len(idx))]

    def loss(self, conditions, seeds, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean distillation loss with its graph to the costs, hard units used)."""
        eng = self.engine
        eng.relax(None)
        eng.reset()
        with torch.no_grad():
            teacher = self.adapter.sample_float(self.pipe, conditions, seeds, num_steps=self.T, guidance_scale=self.g)
        gates, units, _ = self.predictor.gates(self.budget, self.weights, self.full_count if stage == 1 else None)
        self.relax(gates, self.s.checkpoint)
        eng.reset()
        eng.for_samples(seeds)
        try:
            student = self.adapter.sample_float(self.pipe, conditions, seeds, num_steps=self.T,
                                                guidance_scale=self.g, grad=True)
        finally:
            eng.relax(None)
        return self.loss_fn(_frames(teacher) * 2 - 1, _frames(student) * 2 - 1).mean(), units

    def train(self, checkpoint_path: str | Path | None = None, progress: bool = True) -> Schedule:
        from dsbench.io import atomic_path

        ckpt = Path(checkpoint_path) if checkpoint_path else None
        stage_i, it, opt_state = 0, 0, None
        if ckpt is not None and ckpt.exists():
            state = load_checkpoint(ckpt)
            if state["fingerprint"] != self.fingerprint():
                raise ValueError(f"checkpoint {ckpt} belongs to a run with other settings; delete it to start over")
            self.predictor.load_state_dict(state["predictor"])
            stage_i, it, opt_state, self.log = state["stage_index"], state["iteration"], state["optimizer"], state["log"]
            log.info("resuming from %s at stage %d, iteration %d", ckpt, self.stages()[stage_i][0], it)
        else:
            self.initialise()
        stages, started = self.stages(), time.time()
        total = sum(n for _, n in stages)
        bar = tqdm(total=total, initial=sum(n for _, n in stages[:stage_i]) + it, desc="diffsparse", disable=not progress)
        with self.engine:
            while stage_i < len(stages):
                stage, n = stages[stage_i]
                opt = self.optimizer(stage)
                if opt_state is not None:
                    opt.load_state_dict(opt_state)
                    opt_state = None
                while it < n:
                    conds, seeds = self.batch(stage, it)
                    loss, units = self.loss(conds, seeds, stage)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    it += 1
                    self.log.append({"stage": stage, "iteration": it, "loss": float(loss.detach()),
                                     "mean_sparsity": float(units.double().mean()) * self.method.config.interval})
                    bar.update(1)
                    bar.set_postfix(stage=stage, loss=f"{float(loss):.4f}")
                    if it == n and stage == 1:  # equation 9, before the checkpoint; stage 2 drops the forced steps
                        forced = self.predictor.full_steps(self.full_count)
                        self.predictor.warm_start(forced, self.s.delta)
                        self.log.append({"stage": 1, "event": "warm_start", "full_steps": forced})
                    if ckpt is not None and (it % self.s.save_every == 0 or it == n):
                        with atomic_path(ckpt) as tmp:
                            torch.save({"fingerprint": self.fingerprint(), "predictor": self.predictor.state_dict(),
                                        "optimizer": opt.state_dict(), "stage_index": stage_i if it < n else stage_i + 1,
                                        "iteration": it if it < n else 0, "log": self.log}, tmp)
                stage_i, it = stage_i + 1, 0
        bar.close()
        return self.schedule(time.time() - started)

    def schedule(self, seconds: float = 0.0, units: torch.Tensor | None = None, **extra) -> Schedule:
        learned = units is None
        if learned:
            units = self.predictor.layer_units(self.budget, self.weights)
        meta = {**self.meta, **self.fingerprint(), "method": "diffsparse", "items": self.predictor.items,
                "candidates": len(self.keep), "budget_units": self.budget, "train_seconds": round(seconds, 1),
                "loss_curve": self.log, "toca_full_steps": self.toca_full, **extra}
        return self._schedule(units, self.predictor.layer_cost.detach().clone() if learned else None, meta)

    def _schedule(self, units, cost=None, meta=None) -> Schedule:
        groups = self.layout.groups
        several = len(groups) > 1
        return Schedule(torch.as_tensor(units).view(self.predictor.shape), self.method.config.interval,
                        () if several else self.layout.sublayers, cost, meta or {},
                        groups=[(g.name, g.blocks, g.sublayers) for g in groups] if several else None)

    # ---- the search baselines (A.5.4) ------------------------------------------------------------
    def fitness(self, conditions, seeds) -> Callable[[np.ndarray], float]:
        """units -> the training loss to the teacher on a fixed sample set, under the plan of `units`."""
        from methods.engine import Engine

        with torch.no_grad():
            teacher = self.adapter.sample_float(self.pipe, conditions, seeds, num_steps=self.T, guidance_scale=self.g)

        def f(units: np.ndarray) -> float:
            plan = self._schedule(units).plan()
            with Engine(self.adapter, self.pipe, plan, self.method.ranking(), **self.adapter.engine_cfg(self.g)) as eng, \
                    torch.no_grad():
                eng.for_samples(seeds)
                student = self.adapter.sample_float(self.pipe, conditions, seeds, num_steps=self.T,
                                                    guidance_scale=self.g)
                return float(self.loss_fn(_frames(teacher) * 2 - 1, _frames(student) * 2 - 1).mean())
        return f

    def search(self, settings, progress: bool = True) -> Schedule:
        """A GA or random search over budget-exact allocations (instead of training); the GA starts from
        ToCa's allocation, repaired to the budget."""
        from methods.diffsparse.search import genetic_search, random_search

        from dsbench.samples import sample_seed

        n = settings.samples  # one fixed set, reused by every fitness call
        f = self.fitness([self.conditions[i % len(self.conditions)] for i in range(n)],
                         [sample_seed(20_000 + settings.seed, i) for i in range(n)])
        bar = tqdm(total=settings.evaluations, desc=f"diffsparse {settings.algorithm}", disable=not progress)

        def counted(units):
            bar.update(1)
            return f(units)

        S, items = len(self.keep), self.predictor.items
        init = self.toca.clone()
        init[[t - 1 for t in self.toca_full]] = 0
        if settings.algorithm == "ga":
            r = genetic_search(counted, items, S, self.budget, settings.evaluations, population=settings.population,
                               mutation=settings.mutation, seed=settings.seed, weights=self.weights,
                               init=init.reshape(1, -1).numpy())
        else:
            r = random_search(counted, items, S, self.budget, settings.evaluations, seed=settings.seed,
                              weights=self.weights)
        bar.close()
        self.log = [{"evaluation": i + 1, "best_fitness": v} for i, v in enumerate(r.history)]
        return self.schedule(r.seconds, torch.as_tensor(r.units), search={
            "algorithm": settings.algorithm, "evaluations": r.evaluations, "best_fitness": r.fitness,
            "samples": settings.samples, "population": settings.population, "mutation": settings.mutation})


def _layout_id(layout: Layout) -> list:
    """The layout in a checkpoint's fingerprint (one group: [blocks, sub-layers], as it always was)."""
    if len(layout.groups) == 1:
        return [layout.blocks, list(layout.sublayers)]
    return [[g.name, g.blocks, list(g.sublayers)] for g in layout.groups]
