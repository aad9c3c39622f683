"""`toca`: ToCa (Zou et al., ICLR'25), token-wise caching.

Full steps follow ToCa's refresh period; on the other steps each sub-layer computes the fraction
r(step, layer, kind) of its tokens ranked by ToCa's score (cross-attention entropy, or self-attention
influence on a model without cross-attention, + staleness + spatial bonus) and reuses the rest;
self-attention is reused whole. Written from the ToCa paper and our reading of its official code (GPL-3.0, read, not copied).
"""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, check_at_least, check_positive_int, check_ratio
from methods.plan import Plan
from methods.rankings import ATTENTION_TERMS, CFG_CHOICES, SCORES, Ranking
from methods.schedules import toca_fresh_ratio, toca_full_steps
from methods.settings import invalid


@dataclass(frozen=True)
class TokenCacheConfig:
    """fresh_ratio: R, the base fraction of tokens recomputed on partial steps (1 − the paper's cache ratio),
    in [0, 1]; threshold: N, the refresh period parameter (>= 1); constants: the official code's
    refresh-period and fresh-ratio formulas, "pixart" (its 'ToCa' scheduler) or "dit" ('ToCa-ddim50'),
    evaluated on the model sampler's own step clock (up for DPM-Solver, down for DDIM); score: token ranking,
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

    def __post_init__(self):
        owner = type(self).__qualname__.split(".")[0].lower()   # ToCa / DuCa; the bare class: diffsparse's toca
        name = "toca" if owner == "tokencacheconfig" else owner
        check_ratio(name, "fresh_ratio", self.fresh_ratio)
        check_positive_int(name, "threshold", self.threshold)
        check_at_least(name, "staleness_weight", self.staleness_weight, 0)
        check_at_least(name, "bonus", self.bonus, 0)
        check_at_least(name, "grid", self.grid, 0, integer=True)
        if self.constants not in ("pixart", "dit"):
            raise invalid(name, "constants", f"must be 'pixart' or 'dit', got {self.constants!r}")
        if self.cfg_choice not in CFG_CHOICES:
            raise invalid(name, "cfg_choice", f"must be one of {CFG_CHOICES}, got {self.cfg_choice!r}")
        if self.score not in SCORES:
            raise invalid(name, "score", f"must be one of {SCORES}, got {self.score!r}")
        if self.attention_terms not in ATTENTION_TERMS:
            raise invalid(name, "attention_terms", f"must be one of {tuple(ATTENTION_TERMS)}, "
                                                   f"got {self.attention_terms!r}")


def partial_ratios(c: TokenCacheConfig, step: int, num_steps: int, layout: Layout) -> torch.Tensor:
    """(blocks, sublayers) fresh ratios of a partial step."""
    return torch.tensor([[toca_fresh_ratio(c.fresh_ratio, step, b, layout.blocks, kind, num_steps, c.constants,
                                           layout.clock) for kind in layout.kinds] for b in range(layout.blocks)])


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
        ratios = torch.stack([partial_ratios(c, s, num_steps, layout) for s in range(num_steps)])
        for s, which in full.items():
            ratios[s, : (1 if which == "first" else layout.blocks)] = 1.0
        return Plan(ratios, layout.sublayers)

    def ranking(self) -> Ranking:
        return token_ranking(self.config)
