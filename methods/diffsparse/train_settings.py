"""DiffSparse's training settings; the defaults are the paper's (§4.1, A.4.1, Algorithm 1)."""
from __future__ import annotations

from dataclasses import dataclass

from methods.settings import build, invalid

LOSSES = ("lpips", "l2", "ssim")


class _Settings:
    """A block of a diffsparse variant's settings: built from a dict (methods.settings.build: unknown keys
    and wrong types refused), every error names the key."""
    key = ""

    @classmethod
    def of(cls, settings: dict, where: str | None = None):
        return build(cls, settings, where or f"diffsparse.{cls.key}")

    def _invalid(self, name: str, problem: str):
        return invalid(f"diffsparse.{self.key}", name, problem)

    def _positive_ints(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self._invalid(name, f"must be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class TrainSettings(_Settings):
    """samples: training conditions per epoch (captions or class labels, no images; paper 10,000);
    batch_size: conditions per optimiser step; epochs_stage1 / epochs_stage2: passes over `samples` in
    each stage (fractions allowed, 0 skips the stage); seed: of the batches' order and noise; two_stage: Algorithm 1 (False: the single-stage ablation, C_l only, no forced full steps);
    full_steps: |T_f|, steps stage 1 computes in full (None: as many as ToCa's schedule has after step 0);
    lr_layer / lr_step: stage-1 AdamW rates of C_l and C_f; lr_stage2: stage 2's rate of C_l;
    delta: the warm start δ (equation 9); loss: distillation loss to the teacher's final image (Table 6);
    tau: softmax temperature of the straight-through estimator; init_beta: scale of the ToCa-shaped
    initial costs; checkpoint: activation checkpointing per sampling step (memory bounded by the
    caches each step hands to the next, at the cost of a second forward pass in backward);
    save_every: iterations between resumable checkpoints."""
    samples: int = 10000
    batch_size: int = 8
    epochs_stage1: float = 1.0
    epochs_stage2: float = 1.0
    two_stage: bool = True
    full_steps: int | None = None
    lr_layer: float = 1.0
    lr_step: float = 0.01
    lr_stage2: float = 0.1
    delta: float = 10.0
    loss: str = "lpips"
    tau: float = 1.0
    init_beta: float = 1.0
    checkpoint: bool = True
    save_every: int = 25
    seed: int = 0
    key = "train"

    def __post_init__(self):
        self._positive_ints("samples", "batch_size", "save_every")
        for key in ("epochs_stage1", "epochs_stage2", "lr_layer", "lr_step", "lr_stage2", "delta", "init_beta"):
            if not getattr(self, key) >= 0:
                raise self._invalid(key, f"must be >= 0, got {getattr(self, key)!r}")
        if not self.tau > 0:
            raise self._invalid("tau", f"must be > 0, got {self.tau!r}")
        if self.loss not in LOSSES:
            raise self._invalid("loss", f"must be one of {LOSSES}, got {self.loss!r}")
        if self.full_steps is not None and (not isinstance(self.full_steps, int) or self.full_steps < 0):
            raise self._invalid("full_steps", f"must be an integer >= 0 or null, got {self.full_steps!r}")

    def iterations(self, epochs: float) -> int:
        """Optimiser steps in `epochs` passes over `samples` conditions (at least one if epochs > 0)."""
        return max(1, round(epochs * self.samples / self.batch_size)) if epochs > 0 else 0


@dataclass(frozen=True)
class SearchSettings(_Settings):
    """The search baselines of appendix A.5.4 (instead of training): algorithm "ga" (population,
    mutation: GA's population size and per-item mutation probability) or "random"; evaluations: fitness
    calls (the iteration budget); samples: the fixed sample set the fitness (the training loss to the
    teacher) is measured on; seed: of the search and of that sample set."""
    algorithm: str = "ga"
    evaluations: int = 500
    samples: int = 8
    population: int = 50
    mutation: float = 0.01
    seed: int = 0
    key = "search"

    def __post_init__(self):
        if self.algorithm not in ("ga", "random"):
            raise self._invalid("algorithm", f"must be 'ga' or 'random', got {self.algorithm!r}")
        self._positive_ints("evaluations", "samples", "population")
        if not 0 <= self.mutation <= 1:
            raise self._invalid("mutation", f"must be in [0, 1], got {self.mutation!r}")
