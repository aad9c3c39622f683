"""`diffsparse`: a trained per-(step, sub-layer) token sparsity schedule, run as a static plan.

DiffSparse changes how many tokens each sub-layer recomputes at each step, not how they are chosen:
the tokens come from ToCa's ranking (the `toca` settings, which also give the schedule's initial
allocation). The schedule file is trained by `dsbench train-schedule` (rule train_schedule).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from methods.base import Layout, Method, check_ratio
from methods.diffsparse.schedule import Schedule, candidates
from methods.diffsparse.train_settings import SearchSettings, TrainSettings
from methods.plan import Plan
from methods.rankings import Ranking
from methods.settings import invalid
from methods.toca import TokenCacheConfig, token_ranking

BUDGETS = ("items", "macs")


def schedule_path(model: str, variant: str, root: str | Path = "results") -> Path:
    """Where the workflow keeps a variant's trained schedule: results/schedules/{model}/{variant}.safetensors."""
    return Path(root) / "schedules" / model / f"{variant}.safetensors"


class DiffSparse(Method):
    name = "diffsparse"
    trained = True  # needs an artefact made by a training rule before it can sample

    @dataclass(frozen=True)
    class Config:
        """ratio: R in [0, 1], the mean sparsity over items (the paper's budget) or, with budget "macs", the
        fraction of the cached sub-layers' per-token MACs removed; interval: the candidate grid interval
        (Table 7), in (0, 1] and dividing 1; budget: "items" (the paper's) or "macs" (items weighted by their
        sub-layer's per-token MACs); schedule: the trained file (default, filled by the workflow:
        results/schedules/{model}/{variant}.safetensors); toca: ToCa's settings for the token ranking and
        the initial allocation (methods.toca.TokenCacheConfig); train: the training settings
        (methods/diffsparse/train_settings.py TrainSettings); search: SearchSettings, to make the schedule
        by GA / random search (A.5.4) instead of training. The nested blocks are checked key by key
        (methods.settings.build) and kept as dicts."""
        ratio: float = 0.43
        interval: float = 0.25
        budget: str = "items"
        schedule: str | None = None
        toca: dict = field(default_factory=dict, metadata={"settings": TokenCacheConfig})
        train: dict = field(default_factory=dict, metadata={"settings": TrainSettings})
        search: dict | None = field(default=None, metadata={"settings": SearchSettings})

        def __post_init__(self):
            check_ratio("diffsparse", "ratio", self.ratio)
            try:
                candidates(self.interval)
            except ValueError as e:
                raise invalid("diffsparse", "interval", str(e).removeprefix("diffsparse.interval ")) from None
            if self.budget not in BUDGETS:
                raise invalid("diffsparse", "budget", f"must be one of {BUDGETS}, got {self.budget!r}")

    @property
    def toca(self) -> TokenCacheConfig:
        return TokenCacheConfig(**self.config.toca)

    @property
    def settings(self) -> TrainSettings:
        return TrainSettings.of(self.config.train)

    @property
    def search(self) -> SearchSettings | None:
        return None if self.config.search is None else SearchSettings.of(self.config.search)

    def load_schedule(self) -> Schedule:
        if not self.config.schedule:
            raise ValueError("diffsparse needs `schedule`: the path of a trained schedule (.safetensors)")
        sched = Schedule.load(self.config.schedule)
        trained = sched.meta.get("ratio"), sched.meta.get("budget", "items")
        if trained[0] is not None and (abs(trained[0] - self.config.ratio) > 1e-9 or trained[1] != self.config.budget):
            raise ValueError(f"{self.config.schedule} was trained for ratio {trained[0]} ({trained[1]} budget); this "
                             f"variant asks for {self.config.ratio} ({self.config.budget}): retrain it")
        if abs(sched.interval - self.config.interval) > 1e-9:
            raise ValueError(f"{self.config.schedule} uses interval {sched.interval}; this variant asks for "
                             f"{self.config.interval}: retrain it")
        return sched

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        sched = self.load_schedule()
        sched.check_fits(num_steps, layout, where=str(self.config.schedule))
        return sched.plan()

    def ranking(self) -> Ranking:
        return token_ranking(self.toca)
