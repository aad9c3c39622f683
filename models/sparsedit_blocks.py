"""SparseDiT's non-standard blocks: the Poolingformer and an SDTM's generation and recovery blocks.

Each keeps the sub-module names of diffusers' BasicTransformerBlock with ada_norm_zero (norm1 = adaLN-Zero
with its own timestep/label embedder, attn1, norm3, ff), so a DiT block's weights load by name. The
ordinary DiT blocks of SparseDiT (an SDTM's sparse and dense blocks, the top blocks) are BasicTransformerBlock
itself. Tokens are (B, N, C) in PatchEmbed's row-major order over the (rows, cols) grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.normalization import AdaLayerNormZero
from torch import nn


def pool_tokens(x: torch.Tensor, grid_hw: tuple[int, int], g: int) -> torch.Tensor:
    """(B, rows·cols, C) dense tokens -> (B, g², C) sparse ones: adaptive average pooling of the grid,
    which spreads the sparse tokens evenly over space for any g (bins overlap where g does not divide)."""
    b, _, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, *grid_hw)
    return F.adaptive_avg_pool2d(grid, g).flatten(2).transpose(1, 2)


def upsample_tokens(xs: torch.Tensor, g: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(B, g², C) sparse tokens -> (B, rows·cols, C): nearest-neighbour upsampling of the g×g grid."""
    b, _, c = xs.shape
    grid = xs.transpose(1, 2).reshape(b, c, g, g)
    return F.interpolate(grid, size=tuple(grid_hw), mode="nearest").flatten(2).transpose(1, 2)


class _AdaLNBlock(nn.Module):
    """adaLN-Zero modulation and the MLP branch, as BasicTransformerBlock has them."""

    def __init__(self, dim, heads, head_dim, *, num_embeds_ada_norm, attention_bias, activation_fn, norm_eps,
                 norm_elementwise_affine, dropout=0.0, upcast_attention=False, attention=True):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim, num_embeds_ada_norm)
        if attention:
            self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, dropout=dropout,
                                   bias=attention_bias, upcast_attention=upcast_attention)
        self.norm3 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)

    def modulation(self, timestep, class_labels, dtype):
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (B, C): the same
        arithmetic as AdaLayerNormZero, exposed so a block can modulate two token sets with one shift/scale."""
        emb = self.norm1.emb(timestep, class_labels, hidden_dtype=dtype)
        return self.norm1.linear(self.norm1.silu(emb)).chunk(6, dim=1)

    def modulate(self, x, shift, scale):
        return self.norm1.norm(x) * (1 + scale[:, None]) + shift[:, None]

    def mlp(self, x, shift, scale, gate):
        h = self.norm3(x) * (1 + scale[:, None]) + shift[:, None]
        return x + gate.unsqueeze(1) * self.ff(h)

    def cross(self, queries, keys_values, gate, kwargs):
        """Gated attention of modulated queries over modulated keys/values (same projections as DiT's)."""
        return gate.unsqueeze(1) * self.attn1(queries, encoder_hidden_states=keys_values, **(kwargs or {}))


class ValueOnlyAttention(nn.Module):
    """Uniform attention: every query attends equally to every token, so its output is the mean of V over
    the tokens, for every head alike. V and the output projection are affine, so the mean is taken first
    (one token through V and to_out instead of N): exact, and O(N·C + C²) rather than O(N·C²)."""

    # MAC counting in the paper's convention only (metrics.macs.paper_macs_per_forward): V and the output
    # projection run on every token, as the paper counts them (the same values, N times the work).
    per_token: bool = False

    def __init__(self, dim, inner_dim, bias, dropout=0.0):
        super().__init__()
        self.to_v = nn.Linear(dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim), nn.Dropout(dropout)])

    def forward(self, x):
        if self.per_token:
            return self.to_out[1](self.to_out[0](self.to_v(x).mean(dim=1, keepdim=True).expand_as(x)))
        return self.to_out[1](self.to_out[0](self.to_v(x.mean(dim=1, keepdim=True))))  # (B, 1, C): broadcasts


class Poolingformer(_AdaLNBlock):
    """A DiT block whose attention is uniform (its Q and K are dropped): bottom-layer attention maps of DiT are
    nearly uniform, so the pretrained V, output projection, adaLN and MLP are kept."""

    def __init__(self, dim, heads, head_dim, **kw):
        super().__init__(dim, heads, head_dim, attention=False, **kw)
        self.attn1 = ValueOnlyAttention(dim, heads * head_dim, kw["attention_bias"], kw.get("dropout", 0.0))

    def forward(self, x, timestep, class_labels, cross_attention_kwargs=None):
        s_msa, c_msa, g_msa, s_mlp, c_mlp, g_mlp = self.modulation(timestep, class_labels, x.dtype)
        x = x + g_msa.unsqueeze(1) * self.attn1(self.modulate(x, s_msa, c_msa))
        return self.mlp(x, s_mlp, c_mlp, g_mlp)


class GenerationBlock(_AdaLNBlock):
    """An SDTM's first block: the dense tokens X_in pooled to g×g give the sparse tokens X_s, which query the
    dense ones (both modulated with this block's shift/scale), then the MLP on X_s. Returns (B, g², C)."""

    def forward(self, x_in, grid_hw, g, timestep, class_labels, cross_attention_kwargs=None):
        s_msa, c_msa, g_msa, s_mlp, c_mlp, g_mlp = self.modulation(timestep, class_labels, x_in.dtype)
        xs = pool_tokens(x_in, grid_hw, g)
        xs = xs + self.cross(self.modulate(xs, s_msa, c_msa), self.modulate(x_in, s_msa, c_msa), g_msa,
                             cross_attention_kwargs)
        return self.mlp(xs, s_mlp, c_mlp, g_mlp)


class RecoveryBlock(_AdaLNBlock):
    """An SDTM's dense-token recovery: X_merged = linear_1(Up(X_s)) + linear_2(X_in), with Up the nearest
    upsampling g×g -> grid and X_in the SDTM's input (a skip connection); X_merged then queries the sparse
    tokens X_s (both modulated with this block's shift/scale), then the MLP. Returns (B, N, C).

    linear_1 starts at 0 and linear_2 at the identity (X_merged = X_in), the initialisation used when
    converting a pretrained DiT; fine-tuning then learns how much of the sparse path to merge in."""

    def __init__(self, dim, heads, head_dim, **kw):
        super().__init__(dim, heads, head_dim, **kw)
        self.linear_1 = nn.Linear(dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.reset_merge()

    @torch.no_grad()
    def reset_merge(self):
        self.linear_1.weight.zero_()
        self.linear_1.bias.zero_()
        nn.init.eye_(self.linear_2.weight)
        self.linear_2.bias.zero_()

    def forward(self, xs, x_in, grid_hw, g, timestep, class_labels, cross_attention_kwargs=None):
        s_msa, c_msa, g_msa, s_mlp, c_mlp, g_mlp = self.modulation(timestep, class_labels, xs.dtype)
        # Contiguous inputs: the residual stream keeps PatchEmbed's transposed strides, on which a batched
        # linear layer runs as a bmm (an attention-like op to the MAC counter, and slower) instead of one matmul.
        x = self.linear_1(upsample_tokens(xs, g, grid_hw).contiguous()) + self.linear_2(x_in.contiguous())
        x = x + self.cross(self.modulate(x, s_msa, c_msa), self.modulate(xs, s_msa, c_msa), g_msa,
                           cross_attention_kwargs)
        return self.mlp(x, s_mlp, c_mlp, g_mlp)
