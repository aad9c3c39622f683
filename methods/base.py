"""The method interface: a validated config, the number of sampling steps, a plan and a ranking.

A method is small on purpose: everything that touches the model goes through the one
engine in methods/engine.py, and nothing model-specific lives in a method module: where the specs give
per-model constants (ToCa's refresh formulas, spatial bonus, how CFG rows choose tokens), they are
settings with the PixArt values as defaults, and config.yaml sets them per model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from methods.plan import Plan
from methods.rankings import Ranking
from methods.settings import build, invalid


@dataclasses.dataclass(frozen=True)
class Group:
    """What a method may know of one block group: its name, depth and the kind of each sub-layer."""
    name: str
    blocks: int
    sublayers: tuple[str, ...]
    kinds: tuple[str, ...]   # "self_attn" | "cross_attn" | "mlp", aligned with sublayers

    def index(self, kind: str) -> int | None:
        return self.kinds.index(kind) if kind in self.kinds else None


class Layout:
    """What a method may know of the model: its block groups (most models have one; FLUX has its
    dual-stream and single-stream blocks), and which way its sampler's step index counts
    (methods/schedules.py: FORA, ToCa and DuCa test that clock). Nothing else of the model reaches a
    method. `Layout(blocks, sublayers, kinds)` is the one-group form; `Layout(groups=[...])` the general
    one. The one-group attributes refuse a layout of several groups."""

    def __init__(self, blocks: int | None = None, sublayers: tuple[str, ...] | None = None,
                 kinds: tuple[str, ...] | None = None, clock: str = "up", *, groups=None):
        from methods.plan import SINGLE_GROUP

        if groups is None:
            groups = (Group(SINGLE_GROUP, blocks, tuple(sublayers), tuple(kinds)),)
        self.groups: tuple[Group, ...] = tuple(groups)
        self.clock = clock
        for g in self.groups:
            if len(g.kinds) != len(g.sublayers):
                raise ValueError(f"group {g.name!r}: {len(g.sublayers)} sub-layers but {len(g.kinds)} kinds")

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and (self.groups, self.clock) == (other.groups, other.clock)

    def __repr__(self) -> str:
        return f"Layout(groups={self.groups!r}, clock={self.clock!r})"

    def _only(self) -> Group:
        if len(self.groups) != 1:
            raise ValueError(f"this model has {len(self.groups)} block groups "
                             f"({', '.join(g.name for g in self.groups)}): a method must read layout.groups")
        return self.groups[0]

    @property
    def blocks(self) -> int:
        return self._only().blocks

    @property
    def sublayers(self) -> tuple[str, ...]:
        return self._only().sublayers

    @property
    def kinds(self) -> tuple[str, ...]:
        return self._only().kinds

    def index(self, kind: str) -> int | None:
        return self._only().index(kind)

    @property
    def total_blocks(self) -> int:
        return sum(g.blocks for g in self.groups)


def per_group(layout: Layout, build) -> "Plan":
    """A plan from `build(group, first_block) -> (ratios, skip)` per group; `first_block` is the group's
    offset in the model's block order (for methods whose rule counts blocks from the first, e.g.
    DeepCache's shallow blocks)."""
    from methods.plan import GroupPlan

    groups, offset = [], 0
    for g in layout.groups:
        ratios, skip = build(g, offset)
        groups.append(GroupPlan(ratios, g.sublayers, skip, name=g.name))
        offset += g.blocks
    return Plan(groups=groups)


class Method:
    name: ClassVar[str]
    # Optional capabilities, declared here so callers need not probe for them:
    dynamic: ClassVar[bool] = False   # decides at run time (a controller): has controller(), retained()
    trained: ClassVar[bool] = False   # needs a trained artefact (a DiffSparse schedule) named in its settings
    replaces_denoiser: ClassVar[bool] = False  # runs its own network in place of the model's (SparseDiT): has
    #                                           denoiser(), denoiser_identity(), check_depth(), check_ready()
    attaches_peer: ClassVar[bool] = False  # another library's cache, attached through its own API instead of our
    #                                        engine (methods/peers): has attach(pipe, adapter, steps, guidance)
    calibrated: ClassVar[bool] = False  # reads a calibration file made by rule calibrate_peer (MagCache's ratios)
    denoiser_families: ClassVar[tuple[str, ...]] = ()  # the model families whose denoiser it can replace (data:
    #                                                    the cell checks it, no method branches on a family)
    # A dataclass, the one place a method's settings are declared: names, types (checked by
    # methods.settings.build), defaults, and their meaning in its docstring; __post_init__ checks ranges.
    Config: ClassVar[type]

    def __init__(self, **settings: Any):
        self.config = build(self.Config, settings, self.name)

    def num_steps(self, base_steps: int) -> int:
        """Sampling steps this method runs when the model's schedule has `base_steps`."""
        return base_steps

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        """The static plan; the default computes everything."""
        return Plan.full(num_steps, layout)

    def ranking(self) -> Ranking | None:
        """How partial sub-layers choose their tokens (None: the plan has no partial ratios)."""
        return None

    def controller(self, num_steps: int, blocks: int):
        """The run-time rule of a dynamic method (see methods/dicache.py for the interface)."""
        raise TypeError(f"{self.name} is not a dynamic method: it has no controller")

    def denoiser(self, pipe, adapter):
        """The network that replaces `pipe.transformer` (built on its device, dtype and, for the meta device,
        without weights); the cell installs it. Only for methods with `replaces_denoiser`."""
        raise TypeError(f"{self.name} keeps the model's own denoiser")

    def denoiser_identity(self) -> dict:
        """What the replacing network's outputs depend on beyond the method's settings (its weights'
        digest): recorded in every sample shard's identity."""
        raise TypeError(f"{self.name} keeps the model's own denoiser")


def check_ratio(method: str, key: str, value: float, *, low_open: bool = False) -> None:
    bad = not isinstance(value, (int, float)) or not (0 < value <= 1 if low_open else 0 <= value <= 1)
    if bad:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise invalid(method, key, f"must be in {interval}, got {value!r}")


def check_positive_int(method: str, key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(method, key, f"must be an integer >= 1, got {value!r}")


def check_at_least(method: str, key: str, value: float, low: float, *, integer: bool = False) -> None:
    bad = (isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not value >= low)
    if bad:
        raise invalid(method, key, f"must be {'an integer' if integer else 'a number'} >= {low}, got {value!r}")
