"""What a ranking sees of a computed attention sub-layer: its projected queries, keys or values.

The ranking says what it needs (`Ranking.wants(kind)`); the engine runs the sub-layer through
`run_observed`, which captures it one of two ways: from the processor, where the family's attention
processor hands over its final (normalised, rotated) queries and keys (FLUX's, on the joint [text; image]
sequence: the adapter says where each stream's tokens lie), or from forward hooks on the `to_q`, `to_k`,
`to_v` projections (PixArt, DiT, Wan: no normalisation or rotation between them and the scores).
It captures nothing where nothing reads it: on partial self-attention calls (a token's influence needs
every query), and on full calls whose statistic is replaced before any partial call reads it
(`unread_observations`, worked out once per plan).
"""
from __future__ import annotations

import torch

from methods.calls import gather
from methods.plan import COMPUTE


def run_observed(ranking, adapter, site, module, idxs, args, kwargs, run):
    want_qk, want_v = ranking.wants(site.kind, partial=idxs is not None)
    if not (want_qk or want_v):
        return run()
    processor = getattr(module, "processor", None)
    if want_qk and hasattr(processor, "capture"):  # the processor hands over its final q and k
        return _by_processor(ranking, adapter, site, processor, idxs, run)
    seen, handles = {}, []
    for name, wanted in (("to_q", want_qk), ("to_k", want_qk), ("to_v", want_v)):
        if wanted:
            handles.append(getattr(module, name).register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, o)))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    mask = site.args.get(args, kwargs, "attention_mask") if site.kind == "cross_attn" else None
    q, idx = seen.get("to_q"), idxs[0] if idxs else None
    if idx is not None and q is not None and q.shape[1] != idx.shape[1]:
        q = gather(q, idx)  # training computes every token; the ranking sees only the chosen ones
    tokens = site.args.get(args, kwargs, site.spec.args[0]).shape[1]
    ranking.observe((site.g, site.b), site.kind, q, seen.get("to_k"), seen.get("to_v"), mask,
                    module.heads, idx, {site.spec.streams[0]: (0, tokens)})
    return out


def _by_processor(ranking, adapter, site, processor, idxs, run):
    processor.capture = {}
    try:
        out = run()
        got = processor.capture
    finally:
        processor.capture = None
    if idxs is not None:
        return out  # a partial call: self-attention influence needs every query
    flat = lambda t: t.transpose(1, 2).flatten(2)  # noqa: E731  (B, heads, L, d) -> (B, L, heads·d)
    ranking.observe((site.g, site.b), site.kind, flat(got["q"]), flat(got["k"]), None, None,
                    got["q"].shape[1], None, adapter.attention_segments(site.spec, got))
    return out


def unread_observations(ranking, groups, plan) -> frozenset:
    """(step, group, block, sub-layer) of the plan's full calls whose statistic no partial call reads before
    the next full call of that sub-layer replaces it (e.g. the last step's, or a step followed only by
    reuse): the engine runs them without capturing anything. A partial call reads every statistic of its
    block, so every partial call reads the same statistics as when all full calls observe."""
    unread = set()
    for g, (group, p) in enumerate(zip(groups, plan.groups)):
        observed = [j for j, spec in enumerate(group.sublayers) if any(ranking.wants(spec.kind))]
        if not observed:
            continue
        runs = (p.skip == COMPUTE) if p.skip is not None else torch.ones(p.ratios.shape[:2], dtype=torch.bool)
        partial = ((p.ratios > 0) & (p.ratios < 1) & runs.unsqueeze(-1)).tolist()
        full = ((p.ratios >= 1) & runs.unsqueeze(-1)).tolist()
        n = len(group.sublayers)
        for b in range(p.blocks):
            for j in observed:
                read = False   # walking back in call order: will a partial call read what j records here?
                for step in range(p.ratios.shape[0] - 1, -1, -1):
                    for jj in range(n - 1, -1, -1):
                        if partial[step][b][jj]:
                            read = True
                        elif jj == j and full[step][b][j]:
                            if not read:
                                unread.add((step, g, b, j))
                            read = False
    return frozenset(unread)
