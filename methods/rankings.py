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
    logits = qh @ kh.transpose(-1, -2) * d ** -0.5
    if mask is not None:  # an additive bias such as PixArt's (B, 1, L) text padding mask
        logits = logits + mask.float().view(B, 1, -1, mask.shape[-1])
    return logits.softmax(-1).mean(1)


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
    _stats: dict = field(default_factory=dict, repr=False)

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

    def reset(self) -> None:
        self._stats.clear()

    # ---- what the engine must capture ------------------------------------------------------------
    def wants(self, kind: str) -> tuple[bool, bool]:
        """(capture q/k, capture v) for a sub-layer of this kind."""
        if self.score == "attention":
            return kind in self.attention_kinds, False
        if self.score == "vnorm":
            return False, kind == "self_attn"
        return False, False

    def observe(self, block: int, kind: str, q, k, v, mask, heads: int, idx: torch.Tensor | None) -> None:
        """Record a statistic from a computed attention call (idx: the fresh tokens of a partial call)."""
        if self.score == "attention" and q is not None:
            p = _probs(q, k, heads, mask)
            if kind == "cross_attn":  # s2: entropy of each image token's distribution over the text
                stat = _unit(1 + (-(p * (p + 1e-7).log()).sum(-1)))
            elif idx is None:         # s1: how much attention each token receives, over all queries
                stat = _unit(p.sum(1))
            else:
                return  # self-attention influence needs all queries: keep the last full step's
            if idx is not None and (block, kind) in self._stats:
                stat = self._stats[(block, kind)].scatter(1, idx, stat)  # refresh the recomputed rows
            self._stats[(block, kind)] = stat
        elif self.score == "vnorm" and v is not None and idx is None:
            B, N, D = v.shape
            norms = v.float().view(B, N, heads, D // heads).norm(dim=-1)
            self._stats[(block, "vnorm")] = _unit((1 - norms).sum(-1))

    # ---- scores --------------------------------------------------------------------------------------
    def scores(self, *, block: int, sublayer: str, step: int, tokens: torch.Tensor,
               last_input: torch.Tensor | None, staleness: torch.Tensor, grid: tuple[int, int],
               cfg_halves: int = 1) -> torch.Tensor:
        B, N, _ = tokens.shape
        if self.score == "attention":  # the sum of the observed unit-norm terms (s1 + s2 for `both`)
            terms = [self._stats[(block, k)] for k in self.attention_kinds if (block, k) in self._stats]
            s = sum(terms[1:], terms[0]) if terms else None
        elif self.score == "vnorm":
            s = self._stats.get((block, "vnorm"))
        elif self.score == "similarity":  # tokens that moved most since they were computed
            s = -F.cosine_similarity(tokens.float(), last_input.float(), dim=-1) if last_input is not None else None
        elif self.score == "norm":
            s = tokens.float().norm(dim=-1)
        else:
            s = None
        if s is None:  # random (or nothing observed yet)
            s = self._random(B, N, cfg_halves, f"{step}:{block}:{sublayer}").to(tokens.device)
        s = s.to(tokens.device).float()
        if self.staleness_weight:
            s = s + self.staleness_weight * staleness.float() / self.staleness_norm
        if self.bonus and self.grid:
            s = spatial_bonus(s, grid, self.grid, self.bonus)
        return s

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


def spatial_bonus(s: torch.Tensor, grid: tuple[int, int], cell: int, bonus: float) -> torch.Tensor:
    """Add bonus·score to the best token of each cell×cell patch of the token grid (spreads choices)."""
    B, N = s.shape
    h, w = grid
    if h * w != N or h % cell or w % cell:
        return s
    cells = s.view(B, h // cell, cell, w // cell, cell).permute(0, 1, 3, 2, 4).reshape(B, -1, cell * cell)
    best = cells.argmax(-1, keepdim=True)
    cells = cells.scatter_add(-1, best, bonus * cells.gather(-1, best))
    return cells.view(B, h // cell, w // cell, cell, cell).permute(0, 1, 3, 2, 4).reshape(B, N)


def choose(scores: torch.Tensor, k: int, cfg_halves: int, cfg_choice: str = "shared") -> torch.Tensor:
    """Top-k token indices (B, k). "shared": the CFG halves of a sample share one choice (their scores
    averaged); "per_row": every row takes its own top k."""
    if cfg_choice == "per_row" or cfg_halves == 1:
        return scores.topk(k, dim=-1).indices
    B, N = scores.shape
    folded = scores.view(cfg_halves, B // cfg_halves, N).mean(0)
    idx = folded.topk(k, dim=-1).indices
    return idx.repeat(cfg_halves, 1)
