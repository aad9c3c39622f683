"""`toca`: ToCa (Zou et al., ICLR'25), token-wise caching.

Full steps follow ToCa's refresh period; on the other steps each sub-layer computes the fraction
r(step, layer, kind) of its tokens ranked by ToCa's score (cross-attention entropy, or self-attention
influence on a model without cross-attention, + staleness + spatial bonus) and reuses the rest;
self-attention is reused whole. Written from the ToCa paper and our reading of its official code (GPL-3.0, read, not copied).
"""
from dataclasses import dataclass, field

import torch

from methods.base import Group, Layout, Method, check_at_least, check_positive_int, check_ratio, per_group
from methods.plan import Plan
from methods.rankings import ATTENTION_TERMS, CFG_CHOICES, SCORES, Ranking
from methods.schedules import CONSTANTS, toca_fresh_ratio, toca_full_steps
from methods.settings import invalid


@dataclass(frozen=True)
class TokenCacheConfig:
    """fresh_ratio: R, the base fraction of tokens recomputed on partial steps (1 − the paper's cache ratio),
    in [0, 1]; threshold: N, the refresh period parameter (>= 1); constants: the official code's
    refresh-period and fresh-ratio formulas, "pixart" (its 'ToCa' scheduler), "dit" ('ToCa-ddim50') or
    "flux" (its FLUX code: a fixed period N and R·(1.5 − l/27) per layer, attention reused whole),
    evaluated on the model sampler's own step clock (up for DPM-Solver, down for DDIM); group_factors:
    a factor on the fresh ratio per block group, by group name (the FLUX code's stream factor: 0.4 for
    the dual-stream blocks, 1.6 for the single-stream ones; a group not named gets 1); score: token ranking,
    one of attention, vnorm, similarity, norm, random; staleness_weight: λ3 (>= 0); bonus / grid: spatial
    bonus (>= 0; PixArt 0.4 / 4, DiT 0.6 / 2); attention_terms: the attention score's statistics, auto =
    ToCa's (cross-attention entropy s2 where the model has cross-attention, else self-attention influence
    s1), self / cross / both = s1 / s2 / s1 + s2 (Table 10's ablation); cfg_choice: how the CFG rows of a
    sample choose tokens, "shared" (one choice from the averaged scores, as the official PixArt code does)
    or "per_row" (each row ranks on its own, as the official DiT code does); faithful_quirk: reproduce the
    official code's per-layer refresh at steps where T changes (1.57 T instead of 1.64 T on PixArt-α)."""

    fresh_ratio: float = 0.30
    threshold: int = 3
    constants: str = "pixart"
    score: str = "attention"
    staleness_weight: float = 0.25
    bonus: float = 0.4
    grid: int = 4
    attention_terms: str = "auto"
    cfg_choice: str = "shared"
    faithful_quirk: bool = False
    group_factors: dict = field(default_factory=dict)

    def __post_init__(self):
        owner = type(self).__qualname__.split(".")[0].lower()   # ToCa / DuCa; the bare class: diffsparse's toca
        name = "toca" if owner == "tokencacheconfig" else owner
        check_ratio(name, "fresh_ratio", self.fresh_ratio)
        check_positive_int(name, "threshold", self.threshold)
        check_at_least(name, "staleness_weight", self.staleness_weight, 0)
        check_at_least(name, "bonus", self.bonus, 0)
        check_at_least(name, "grid", self.grid, 0, integer=True)
        if self.constants not in CONSTANTS:
            raise invalid(name, "constants", f"must be one of {CONSTANTS}, got {self.constants!r}")
        for group, factor in self.group_factors.items():
            check_at_least(name, f"group_factors.{group}", factor, 0)
        if self.cfg_choice not in CFG_CHOICES:
            raise invalid(name, "cfg_choice", f"must be one of {CFG_CHOICES}, got {self.cfg_choice!r}")
        if self.score not in SCORES:
            raise invalid(name, "score", f"must be one of {SCORES}, got {self.score!r}")
        if self.attention_terms not in ATTENTION_TERMS:
            raise invalid(name, "attention_terms", f"must be one of {tuple(ATTENTION_TERMS)}, "
                                                   f"got {self.attention_terms!r}")


def partial_ratios(c: TokenCacheConfig, step: int, num_steps: int, group: Group, clock: str) -> torch.Tensor:
    """(blocks, sublayers) fresh ratios of a partial step in one block group."""
    factor = c.group_factors.get(group.name, 1.0)
    return torch.tensor([[toca_fresh_ratio(c.fresh_ratio, step, b, group.blocks, kind, num_steps, c.constants, clock,
                                           factor) for kind in group.kinds] for b in range(group.blocks)])


def token_ranking(c: TokenCacheConfig) -> Ranking:
    return Ranking(score=c.score, staleness_weight=c.staleness_weight, staleness_norm=c.threshold,
                   bonus=c.bonus, grid=c.grid, attention_terms=c.attention_terms, cfg_choice=c.cfg_choice)


class ToCa(Method):
    name = "toca"

    @dataclass(frozen=True)
    class Config(TokenCacheConfig):
        __doc__ = TokenCacheConfig.__doc__

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        c = self.config
        full = toca_full_steps(c.threshold, num_steps, c.constants, layout.clock, quirk=c.faithful_quirk)

        def group_plan(g: Group, first: int):
            ratios = torch.stack([partial_ratios(c, s, num_steps, g, layout.clock) for s in range(num_steps)])
            for s, which in full.items():  # the quirk's "first": layer 0 of the model only
                ratios[s, : (max(0, 1 - first) if which == "first" else g.blocks)] = 1.0
            return ratios, None
        return per_group(layout, group_plan)

    def ranking(self) -> Ranking:
        return token_ranking(self.config)
