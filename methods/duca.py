"""`duca`: DuCa (Zou et al. 2024), dual feature caching: full → conservative (ToCa-style partial) →
aggressive (every block skipped, the last computed final hidden state reused) steps.
Written from the DuCa paper and our reading of its official code; the aggressive step follows that code,
which skips every block (DuCa issue #9), not the paper's "all but the last"."""
from dataclasses import dataclass

import torch

from methods.base import Layout, Method, per_group
from methods.plan import SKIP_OUTPUT, Plan
from methods.rankings import Ranking
from methods.schedules import clock, toca_period
from methods.toca import TokenCacheConfig, partial_ratios, token_ranking


def duca_step_types(threshold: int, num_steps: int, constants: str, direction: str) -> list[str]:
    """"full" / "conservative" / "aggressive" per step. PixArt: T = N constant; DiT: ToCa's DiT period.
    A step is full at clock mod T == 0 (and the first step), conservative when odd, aggressive when even;
    the clock counts in the sampler's direction."""
    types, period = [], threshold
    for s in range(num_steps):
        c = clock(s, num_steps, direction)
        if s == 0 or c % period == 0:
            types.append("full")
            if constants == "dit":
                period = toca_period(threshold, s, num_steps, constants, direction)
        else:
            types.append("conservative" if (c % period) % 2 else "aggressive")
    return types


class DuCa(Method):
    name = "duca"

    @dataclass(frozen=True)
    class Config(TokenCacheConfig):
        __doc__ = "DuCa's settings: those of ToCa (methods.toca.TokenCacheConfig), fresh_ratio 0.75 by default. " + \
            TokenCacheConfig.__doc__
        fresh_ratio: float = 0.75

    def plan(self, num_steps: int, layout: Layout) -> Plan:
        c = self.config
        types = duca_step_types(c.threshold, num_steps, c.constants, layout.clock)

        def group_plan(g, first):
            ratios = torch.ones(num_steps, g.blocks, len(g.sublayers))
            skip = torch.zeros(num_steps, g.blocks, dtype=torch.int8)
            for s, t in enumerate(types):
                if t == "conservative":
                    ratios[s] = partial_ratios(c, s, num_steps, g, layout.clock)
                elif t == "aggressive":
                    skip[s] = SKIP_OUTPUT
            return ratios, skip
        return per_group(layout, group_plan)

    def ranking(self) -> Ranking:
        return token_ranking(self.config)
