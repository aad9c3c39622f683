"""SparseDiT (Chang et al., NeurIPS 2025, arXiv 2412.06028): a DiT whose middle layers run on a few pooled tokens.

The layer plan, bottom to top (DiT-XL/2's default: 2 + 4 × 6 + 2 = 28 blocks):

- `num_poolingformers` Poolingformers: DiT blocks with uniform attention (models.sparsedit_blocks);
- `num_sdtms` sparse-dense token modules (SDTMs), each `sdtm_layout` = [generation, sparse, recovery, dense]
  blocks: the generation block pools the N dense tokens to a g×g grid of sparse tokens that attend to the
  dense ones; ordinary DiT blocks run on the g² sparse tokens; the recovery block upsamples them back, merges
  them with the SDTM's input and lets the result attend to the sparse tokens; ordinary DiT blocks follow on N;
- `num_top_blocks` ordinary DiT blocks, then DiT's final layer and unpatchify.

Blocks live in one list, `transformer_blocks`, in that order, so block i holds DiT block i's weights
(`convert_dit`). The forward has DiTTransformer2DModel's signature and output, so diffusers' DiTPipeline
runs it in place of the DiT transformer (CFG batches included).

The sparse grid g comes from the `timestep` argument (models.sparsedit_density): every row of a batch must
map to the same g, which holds for the pipeline (all rows share the step's t) and for a training batch
drawn from one interval of the piecewise schedule; `sparse_grid` in the config (or in the call) fixes g.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from models.sparsedit_blocks import GenerationBlock, Poolingformer, RecoveryBlock
from models.sparsedit_density import TemporalDensity

PLAN_KEYS = ("num_poolingformers", "num_sdtms", "sdtm_layout", "num_top_blocks", "pruning_rates",
             "density_intervals", "sparse_grid", "num_train_timesteps")


def layer_roles(num_poolingformers: int, num_sdtms: int, sdtm_layout, num_top_blocks: int) -> tuple[str, ...]:
    """Each block's role, bottom to top: pool, gen, sparse, rec, dense (an SDTM's), top."""
    counts = {"num_poolingformers": num_poolingformers, "num_sdtms": num_sdtms, "num_top_blocks": num_top_blocks}
    for name, n in counts.items():
        if not (isinstance(n, int) and n >= 0):
            raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    layout = list(sdtm_layout)
    if len(layout) != 4 or not all(isinstance(n, int) and n >= 0 for n in layout):
        raise ValueError(f"sdtm_layout is [generation, sparse, recovery, dense] block counts, got {sdtm_layout!r}")
    if layout[0] != 1 or layout[2] != 1:
        raise ValueError(f"an SDTM has exactly one generation and one recovery block, got sdtm_layout {layout}")
    sdtm = ("gen",) + ("sparse",) * layout[1] + ("rec",) + ("dense",) * layout[3]
    return ("pool",) * num_poolingformers + sdtm * num_sdtms + ("top",) * num_top_blocks


class SparseDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """DiTTransformer2DModel's arguments (same meaning, same defaults: DiT-XL/2) plus the layer plan and the
    temporal density: `pruning_rates` = (r_min, r_max); `density_intervals`: K for the piecewise-constant
    schedule used in training (None: continuous); `sparse_grid`: one fixed g (None: from the timestep);
    `num_train_timesteps`: T of the timestep index."""

    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 72, in_channels: int = 4,
                 out_channels: int | None = None, num_layers: int = 28, dropout: float = 0.0,
                 norm_num_groups: int = 32, attention_bias: bool = True, sample_size: int = 32, patch_size: int = 2,
                 activation_fn: str = "gelu-approximate", num_embeds_ada_norm: int | None = 1000,
                 upcast_attention: bool = False, norm_type: str = "ada_norm_zero",
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-5,
                 num_poolingformers: int = 2, num_sdtms: int = 4, sdtm_layout: tuple[int, ...] = (1, 3, 1, 1),
                 num_top_blocks: int = 2, pruning_rates: tuple[float, float] = (0.61, 0.86),
                 density_intervals: int | None = None, sparse_grid: int | None = None,
                 num_train_timesteps: int = 1000):
        super().__init__()
        if norm_type != "ada_norm_zero" or num_embeds_ada_norm is None:
            raise ValueError(f"SparseDiT is class-conditional DiT: norm_type 'ada_norm_zero' with "
                             f"num_embeds_ada_norm set, got {norm_type!r} and {num_embeds_ada_norm!r}")
        self.roles = layer_roles(num_poolingformers, num_sdtms, sdtm_layout, num_top_blocks)
        if len(self.roles) != num_layers:
            raise ValueError(f"the layer plan has {len(self.roles)} blocks ({num_poolingformers} Poolingformers + "
                             f"{num_sdtms} SDTMs × {sum(sdtm_layout)} + {num_top_blocks} top) but num_layers is "
                             f"{num_layers}")
        if len(pruning_rates) != 2:
            raise ValueError(f"pruning_rates is (r_min, r_max), got {pruning_rates!r}")
        self.density = TemporalDensity(float(pruning_rates[0]), float(pruning_rates[1]), density_intervals,
                                       sparse_grid, num_train_timesteps)
        side = sample_size // patch_size
        if sparse_grid is not None and sparse_grid > side:
            raise ValueError(f"sparse_grid {sparse_grid} exceeds the {side}×{side} token grid")

        dim = num_attention_heads * attention_head_dim
        self.inner_dim, self.patch_size = dim, patch_size
        self.out_channels = in_channels if out_channels is None else out_channels
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=dim)
        shared = dict(num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=attention_bias, dropout=dropout,
                      activation_fn=activation_fn, upcast_attention=upcast_attention, norm_eps=norm_eps,
                      norm_elementwise_affine=norm_elementwise_affine)
        special = {"pool": Poolingformer, "gen": GenerationBlock, "rec": RecoveryBlock}
        self.transformer_blocks = nn.ModuleList([
            special[r](dim, num_attention_heads, attention_head_dim, **shared) if r in special else
            BasicTransformerBlock(dim, num_attention_heads, attention_head_dim, norm_type=norm_type, **shared)
            for r in self.roles])
        # DiT's final layer: adaLN (shift, scale) from block 0's embedder, then the patch projection.
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, patch_size * patch_size * self.out_channels)

    def sparse_grid_for(self, timestep, grid_hw: tuple[int, int], sparse_grid: int | None = None) -> int | None:
        """The batch's g (None without SDTMs): `sparse_grid`, else the config's fixed grid, else the density at
        the batch's timesteps, which must all give the same g."""
        if not self.config.num_sdtms:
            return None
        if sparse_grid is not None:
            return TemporalDensity(fixed_grid=sparse_grid).grid(0, grid_hw)
        if self.density.fixed_grid is not None:
            return self.density.grid(0, grid_hw)
        if timestep is None:
            raise ValueError("SparseDiT chooses its sparse grid from the timestep: pass timestep or sparse_grid")
        steps = torch.as_tensor(timestep).reshape(-1).unique().tolist()  # a host sync, once per call
        grids = sorted({self.density.grid(t, grid_hw) for t in steps})
        if len(grids) > 1:
            raise ValueError(f"the batch's timesteps need different sparse grids {grids}; a batch shares one g "
                             f"(draw it from one density interval, or pass sparse_grid)")
        return grids[0]

    def forward(self, hidden_states: torch.Tensor, timestep: torch.LongTensor | None = None,
                class_labels: torch.LongTensor | None = None, cross_attention_kwargs: dict | None = None,
                return_dict: bool = True, sparse_grid: int | None = None):
        """DiTTransformer2DModel's forward; `sparse_grid` fixes g for this call (else `sparse_grid_for`)."""
        grid_hw = hidden_states.shape[-2] // self.patch_size, hidden_states.shape[-1] // self.patch_size
        g = self.sparse_grid_for(timestep, grid_hw, sparse_grid)
        x = self.pos_embed(hidden_states)
        cond = dict(timestep=timestep, class_labels=class_labels, cross_attention_kwargs=cross_attention_kwargs)
        for role, block in zip(self.roles, self.transformer_blocks):
            if role == "gen":
                x_in, x = x, block(x, grid_hw, g, **cond)
            elif role == "rec":
                x = block(x, x_in, grid_hw, g, **cond)
            else:
                x = block(x, **cond)

        conditioning = self.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        x = self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
        p, c = self.patch_size, self.out_channels
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(-1, *grid_hw, p, p, c))
        output = x.reshape(-1, c, grid_hw[0] * p, grid_hw[1] * p)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    @classmethod
    def from_dit(cls, dit, **plan) -> "SparseDiTTransformer2DModel":
        """`convert_dit`, refusing a conversion that left any source weight unused or any target weight unset."""
        model, report = convert_dit(dit, **plan)
        if not report.ok:
            raise ValueError(f"DiT -> SparseDiT conversion is incomplete: unmapped DiT weights {report.unmapped}, "
                             f"unset SparseDiT weights {report.unset}")
        return model


@dataclass
class ConversionReport:
    discarded: list[str]   # DiT weights dropped by design: each Poolingformer's query and key projections
    new: list[str]         # SparseDiT weights DiT lacks, initialised: recovery linear_1 = 0, linear_2 = identity
    unmapped: list[str]    # any other DiT weight nothing took
    unset: list[str]       # any other SparseDiT weight nothing set

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.unset)


def convert_dit(dit, **plan) -> tuple[SparseDiTTransformer2DModel, ConversionReport]:
    """A SparseDiT with the weights of a diffusers DiTTransformer2DModel, block i from DiT block i.

    Same-named weights are copied (embedders, adaLN, MLPs, attention projections, final layer; the fixed
    sin-cos positional table is rebuilt from the same config). A Poolingformer keeps V and the output
    projection; a generation or recovery block keeps Q, K and V (diffusers' DiT has separate to_q/to_k/to_v
    where the original DiT has one fused qkv). `plan`: the PLAN_KEYS settings; the rest comes from DiT's config.
    """
    from diffusers import DiTTransformer2DModel

    if not isinstance(dit, DiTTransformer2DModel):
        raise ValueError(f"convert_dit converts a diffusers DiTTransformer2DModel, got {type(dit).__name__}")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"convert_dit takes only the plan settings {', '.join(PLAN_KEYS)}; got {unknown} "
                         f"(the architecture comes from the DiT's config)")
    config = {k: v for k, v in dit.config.items() if not k.startswith("_")}
    # In the source's mode: in training mode the label embedders drop labels at random (CFG training).
    model = SparseDiTTransformer2DModel(**config, **plan).to(dit.device).train(dit.training)
    if dit.dtype != model.dtype:
        model.to(dtype=dit.dtype)
    src, dst = dit.state_dict(), model.state_dict()

    def under(key, roles, parts):
        i = key.split(".")[1] if key.startswith("transformer_blocks.") else None
        return i is not None and model.roles[int(i)] in roles and any(f".{i}.{p}." in key for p in parts)

    discarded = [k for k in src if under(k, ("pool",), ("attn1.to_q", "attn1.to_k"))]
    new = [k for k in dst if under(k, ("rec",), ("linear_1", "linear_2"))]
    common = [k for k in dst if k in src]
    wrong = [f"{k} {tuple(src[k].shape)} -> {tuple(dst[k].shape)}" for k in common if src[k].shape != dst[k].shape]
    if wrong:
        raise ValueError(f"DiT -> SparseDiT conversion: shapes differ for {'; '.join(wrong)}")
    with torch.no_grad():
        for k in common:
            dst[k].copy_(src[k])
        for role, block in zip(model.roles, model.transformer_blocks):
            if role == "rec":
                block.reset_merge()
    report = ConversionReport(discarded=discarded, new=new,
                              unmapped=[k for k in src if k not in dst and k not in discarded],
                              unset=[k for k in dst if k not in src and k not in new])
    return model, report
