"""Token rankings: which k tokens a partial sub-layer computes (higher score = computed first).

Written from our reading of the ToCa and DuCa papers and their official code (GPL-3.0, read, not copied).
A ranking sees what the engine observes on computed steps (queries, keys, values of attention
sub-layers) and the per-token staleness counters; it returns scores (B, N). How the CFG rows of a sample
choose is a setting (`cfg_choice`), because the official codes differ: ToCa's and DuCa's PixArt code
make the conditional and unconditional scores identical (averaged maps, duplicated random draws), so
both rows compute the same tokens ("shared"); their DiT code ranks every row on its own ("per_row").
Random scores are a function of the sample (its seed, or its row when none is given) and the same for
both CFG rows of it, as both official codes draw them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import zlib

import torch
import torch.nn.functional as F

SCORES = ("attention", "vnorm", "similarity", "norm", "random")
# Which attention statistics the `attention` score adds up: ToCa's choice (`auto`: s2, the cross-attention
# entropy, where the model has cross-attention, else s1, the self-attention influence), or a fixed set,
# as in DiffSparse's Table 10 ablation (s1 + s2, then without one of them).
ATTENTION_TERMS = {"auto": None, "self": ("self_attn",), "cross": ("cross_attn",), "both": ("self_attn", "cross_attn")}
CFG_CHOICES = ("shared", "per_row")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _probs(q: torch.Tensor, k: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Head-mean attention probabilities (B, Nq, Nk) from projected queries and keys."""
    B, Nq, D = q.shape
    d = D // heads
    qh = q.view(B, Nq, heads, d).transpose(1, 2).float()
    kh = k.view(B, -1, heads, d).transpose(1, 2).float()
    # In place: the same operations in the same order as ((qh @ khᵀ) · d^-½ + mask).softmax(-1), so the same
    # values bit for bit, without three more (B, heads, Nq, Nk) tensors: on a CPU each large allocation is
    # fresh page-faulted memory, and that, more than the arithmetic, was this function's cost.
    logits = qh @ kh.transpose(-1, -2)
    logits.mul_(d ** -0.5)
    if mask is not None:  # an additive bias such as PixArt's (B, 1, L) text padding mask
        logits.add_(mask.float().view(B, 1, -1, mask.shape[-1]))
    return torch.softmax(logits, -1, out=logits).mean(1)


@dataclass
class Ranking:
    score: str = "attention"
    staleness_weight: float = 0.0   # λ3: adds λ3 · staleness / staleness_norm
    staleness_norm: float = 1.0
    bonus: float = 0.0              # spatial bonus: the best token of each grid×grid cell gets bonus·score
    grid: int = 0
    seed: int = 0
    attention_terms: str = "auto"
    cfg_choice: str = "shared"           # "shared": a sample's CFG rows choose one set; "per_row": each its own
    attention_kind: str = "cross_attn"   # set by the engine: cross_attn entropy if the model has one, else self_attn
    sample_keys: list | None = None      # set by the engine per call: one key per sample (its seed)
    _stats: dict = field(default_factory=dict, repr=False)   # (where, kind) -> (stat (B, N), segments)

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"unknown token score {self.score!r}; one of {SCORES}")
        if self.attention_terms not in ATTENTION_TERMS:
            raise ValueError(f"unknown attention_terms {self.attention_terms!r}; one of {tuple(ATTENTION_TERMS)}")
        if self.cfg_choice not in CFG_CHOICES:
            raise ValueError(f"unknown cfg_choice {self.cfg_choice!r}; one of {CFG_CHOICES}")

    @property
    def attention_kinds(self) -> tuple[str, ...]:
        return ATTENTION_TERMS[self.attention_terms] or (self.attention_kind,)

    def check_model(self, kinds) -> None:
        """Set ToCa's default statistic for a model with these sub-layer kinds; refuse terms it lacks."""
        self.attention_kind = "cross_attn" if "cross_attn" in kinds else "self_attn"
        if self.score == "attention" and not set(self.attention_kinds) <= set(kinds):
            raise ValueError(f"attention_terms {self.attention_terms!r} needs {' and '.join(self.attention_kinds)} "
                             f"sub-layers; this model has {', '.join(sorted(kinds))}")

    # ---- state (the engine keeps one per CFG branch and snapshots it for training) -----------------
    def reset(self) -> None:
        self._stats = {}

    def state(self) -> dict:
        """The observed statistics, as an opaque value for load_state (a shallow copy)."""
        return dict(self._stats)

    def load_state(self, state: dict) -> None:
        self._stats = dict(state)

    # ---- what the engine must capture ------------------------------------------------------------
    def wants(self, kind: str, partial: bool = False) -> tuple[bool, bool]:
        """(capture q/k, capture v) on a computed sub-layer of this kind: `attention` needs the projected
        queries and keys of the attention kinds it adds up, `vnorm` the values of self-attention; the
        other scores need nothing captured. `partial`: a call on chosen tokens, from which only the
        cross-attention entropy is refreshed (self-attention influence and value norms need every token)."""
        if self.score == "attention":
            return kind in self.attention_kinds and not (partial and kind != "cross_attn"), False
        if self.score == "vnorm":
            return False, kind == "self_attn" and not partial
        return False, False

    def observe(self, where: tuple, kind: str, q, k, v, mask, heads: int, idx: torch.Tensor | None,
                segments: dict[str, tuple[int, int]]) -> None:
        """Record a statistic from a computed attention call at `where` (group, block). `idx`: the fresh
        query tokens of a partial call. `segments`: stream -> (start, length) of each stream's tokens on
        the statistic's token axis (FLUX's joint attention covers [text; image])."""
        if self.score == "attention" and q is not None:
            p = _probs(q, k, heads, mask)
            if kind == "cross_attn":  # s2: entropy of each image token's distribution over the text
                h = p + 1e-7            # then in place: bit for bit -(p * (p + 1e-7).log()).sum(-1)
                stat = _unit(1 + (-h.log_().mul_(p).sum(-1)))
            elif idx is None:         # s1: how much attention each token receives, over all queries
                stat = _unit(p.sum(1))
            else:
                return  # self-attention influence needs all queries: keep the last full step's
            if idx is not None and (where, kind) in self._stats:
                stat = self._stats[(where, kind)][0].scatter(1, idx, stat)  # refresh the recomputed rows
            self._stats[(where, kind)] = (stat, segments)
        elif self.score == "vnorm" and v is not None and idx is None:
            B, N, D = v.shape
            norms = v.float().view(B, N, heads, D // heads).norm(dim=-1)
            self._stats[(where, "vnorm")] = (_unit((1 - norms).sum(-1)), segments)

    def _stat(self, where: tuple, kind: str, stream: str) -> torch.Tensor | None:
        found = self._stats.get((where, kind))
        if found is None or stream not in found[1]:
            return None
        stat, segments = found
        start, length = segments[stream]
        return stat if (start, length) == (0, stat.shape[1]) else stat[:, start:start + length]

    # ---- scores --------------------------------------------------------------------------------------
    def scores(self, *, where: tuple, stream: str, step: int, tokens: torch.Tensor,
               last_input: torch.Tensor | None, staleness: torch.Tensor, grid: tuple[int, int] | None,
               cfg_halves: int = 1, key: str) -> torch.Tensor:
        """Scores (B, N) of the tokens of `stream` at a partial sub-layer of `where` (group, block);
        `key` names the item for random draws."""
        B, N, _ = tokens.shape
        if self.score == "attention":  # the sum of the observed unit-norm terms (s1 + s2 for `both`)
            terms = [t for k in self.attention_kinds if (t := self._stat(where, k, stream)) is not None]
            s = sum(terms[1:], terms[0]) if terms else None
        elif self.score == "vnorm":
            s = self._stat(where, "vnorm", stream)
        elif self.score == "similarity":  # tokens that moved most since they were computed
            s = -F.cosine_similarity(tokens.float(), last_input.float(), dim=-1) if last_input is not None else None
        elif self.score == "norm":
            s = tokens.float().norm(dim=-1)
        else:
            s = None
        if s is None:  # random (or nothing observed yet)
            s = self._random(B, N, cfg_halves, key).to(tokens.device)
        s = s.to(tokens.device).float()
        if self.staleness_weight:
            s = s + self.staleness_weight * staleness.float() / self.staleness_norm
        if self.bonus and self.grid and grid is not None:
            s = spatial_bonus(s, grid, self.grid, self.bonus)
        return s

    @property
    def keeps_inputs(self) -> bool:
        """Whether the engine must keep each sub-layer's last inputs (the similarity score compares them)."""
        return self.score == "similarity"

    def _random(self, B: int, N: int, cfg_halves: int, where: str) -> torch.Tensor:
        """Uniform scores (B, N): one draw per sample, keyed on (seed, sample key, step, block, sub-layer),
        repeated for its CFG rows, so a sample's tokens never depend on the batch it is drawn in."""
        per_half = B // cfg_halves
        keys = range(per_half) if self.sample_keys is None else self.sample_keys  # None: library use, by row
        if len(keys) != per_half:
            raise ValueError(f"the engine was told {len(keys)} samples but the denoiser batch holds {per_half}")
        rows = [torch.rand(N, generator=torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}:{key}:{where}".encode()))) for key in keys]
        return torch.stack(rows).repeat(cfg_halves, 1)


def check_grid(grid: tuple[int, int], cell: int) -> None:
    """Refuse a spatial-bonus cell that does not tile the token grid (instead of skipping the bonus)."""
    h, w = grid
    if h % cell or w % cell:
        raise ValueError(f"the spatial bonus's grid {cell} does not divide the {h}×{w} token grid: set the "
                         f"method's `grid` to a divisor of both (or bonus 0)")


def spatial_bonus(s: torch.Tensor, grid: tuple[int, int], cell: int, bonus: float) -> torch.Tensor:
    """Add bonus·score to the best token of each cell×cell patch of the token grid (spreads choices).
    The grid's tokens are the last rows·cols of the sequence: a joint [text; image] sequence keeps the
    text's scores as they are (text tokens have no position on the grid)."""
    B, N = s.shape
    h, w = grid
    check_grid(grid, cell)
    if N < h * w:
        raise ValueError(f"{N} tokens cannot hold the {h}×{w} token grid")
    if N > h * w:
        return torch.cat([s[:, : N - h * w], spatial_bonus(s[:, N - h * w:], grid, cell, bonus)], dim=1)
    # max_pool2d's indices: the first maximum of each window in row-major order (what argmax over the cell's
    # flattened tokens gives), as flat positions in the grid; s[best] + bonus·s[best] is then added in place
    # of a permute / argmax / scatter / permute-back round trip.
    best, where = F.max_pool2d(s.view(B, 1, h, w), cell, return_indices=True)
    return s.scatter_add(1, where.view(B, -1), bonus * best.view(B, -1))


def choose(scores: torch.Tensor, k: int, cfg_halves: int, cfg_choice: str = "shared") -> torch.Tensor:
    """Top-k token indices (B, k). "shared": the CFG halves of a sample share one choice (their scores
    averaged); "per_row": every row takes its own top k."""
    if cfg_choice == "per_row" or cfg_halves == 1:
        return scores.topk(k, dim=-1).indices
    B, N = scores.shape
    folded = scores.view(cfg_halves, B // cfg_halves, N).mean(0)
    idx = folded.topk(k, dim=-1).indices
    return idx.repeat(cfg_halves, 1)
