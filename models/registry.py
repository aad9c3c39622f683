"""Registered model presets: pure data, importable without torch (the Snakefile and schema tests use it).

A preset fixes the architecture and where real weights live; the run settings (steps, scheduler,
guidance, dataset) live in config.yaml so the experiment matrix stays in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Architectures (diffusers constructor kwargs). Real ones follow diffusers' conversion scripts
# (see shared/reference/diffusers-internals.md §2.3); tiny ones run on a CPU in seconds.
PIXART_XL_2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    patch_size=2, cross_attention_dim=1152, caption_channels=4096, attention_bias=True,
    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, upcast_attention=False, use_additional_conditions=False,
)
DIT_XL_2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    patch_size=2, sample_size=32, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    norm_elementwise_affine=False, norm_eps=1e-5, activation_fn="gelu-approximate",
)
SD_VAE = dict(  # stabilityai/sd-vae-ft-ema, the VAE of PixArt-alpha and DiT
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    scaling_factor=0.18215,
)
TINY_VAE = dict(  # two levels -> vae_scale_factor 2
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, scaling_factor=0.18215,
)
PIXEL_VAE = dict(channels=3, block_out_channels=[1], scaling_factor=1.0)  # models.pixel_vae: latents are pixels
PROXY_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str                        # adapter module in models/: pixart, dit (flux, wan later)
    resolution: int                    # output image side in pixels
    transformer: dict[str, Any]        # diffusers transformer kwargs
    vae: dict[str, Any]
    hub_id: str | None = None          # repo with the whole pipeline (None: tiny, built from config)
    transformer_hub_id: str | None = None  # repo whose `transformer/` overrides the pipeline's
    text_encoder: dict[str, Any] | None = None   # tiny T5 kwargs (tiny presets only)
    text_tokens: int = 120             # max_sequence_length of the caption encoder
    text_dim: int = 4096               # caption embedding width (T5-XXL)
    proxy: str | None = None           # trained CPU proxy: its committed folder under models/proxies/
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_tiny(self) -> bool:
        return self.hub_id is None

    @property
    def pixel_space(self) -> bool:
        return self.vae is PIXEL_VAE

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae["block_out_channels"]) - 1)


def _pixart(name, resolution, transformer_hub_id):
    return ModelPreset(
        name=name, family="pixart", resolution=resolution,
        transformer=dict(PIXART_XL_2, sample_size=resolution // 8), vae=SD_VAE,
        # The 256 repo may hold only a transformer; the rest of the pipeline comes from the 512 repo.
        hub_id="PixArt-alpha/PixArt-XL-2-512x512", transformer_hub_id=transformer_hub_id,
    )


MODELS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        _pixart("pixart_alpha_256", 256, "PixArt-alpha/PixArt-XL-2-256x256"),
        _pixart("pixart_alpha_512", 512, None),
        ModelPreset(
            name="dit_xl_2_256", family="dit", resolution=256, transformer=DIT_XL_2, vae=SD_VAE,
            hub_id="facebook/DiT-XL-2-256", text_tokens=0, text_dim=0,
        ),
        ModelPreset(
            name="tiny_pixart", family="pixart", resolution=32,
            transformer=dict(
                PIXART_XL_2, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                cross_attention_dim=32, caption_channels=32, sample_size=16,
            ),
            vae=TINY_VAE, text_encoder=TINY_T5, text_tokens=80, text_dim=32,
        ),
        ModelPreset(  # a CPU-sized PixArt for speed benchmarks: 256 image tokens, 120 text tokens, width 512
            name="mid_pixart", family="pixart", resolution=64,
            transformer=dict(
                PIXART_XL_2, num_attention_heads=8, attention_head_dim=64, num_layers=8,
                cross_attention_dim=512, caption_channels=32, sample_size=32,
            ),
            vae=TINY_VAE, text_encoder=TINY_T5, text_tokens=120, text_dim=32,
        ),
        # CPU proxies trained by this harness (models/proxy.py): pixel space 32×32, patch 2 -> 256 tokens.
        ModelPreset(
            name="proxy_dit", family="dit", resolution=32, proxy="proxy_dit", vae=PIXEL_VAE,
            transformer=dict(DIT_XL_2, num_attention_heads=4, attention_head_dim=16, num_layers=6,
                             sample_size=32, in_channels=3, out_channels=3),
            text_tokens=0, text_dim=0,
        ),
        ModelPreset(
            name="proxy_pixart", family="pixart", resolution=32, proxy="proxy_pixart", vae=PIXEL_VAE,
            transformer=dict(PIXART_XL_2, num_attention_heads=4, attention_head_dim=16, num_layers=6,
                             cross_attention_dim=64, caption_channels=PROXY_T5["d_model"], sample_size=32,
                             in_channels=3, out_channels=3),
            text_encoder=PROXY_T5, text_tokens=16, text_dim=PROXY_T5["d_model"],
        ),
        ModelPreset(
            name="tiny_dit", family="dit", resolution=32,
            transformer=dict(DIT_XL_2, num_attention_heads=2, attention_head_dim=16, num_layers=4, sample_size=16),
            vae=TINY_VAE, text_tokens=0, text_dim=0,
        ),
    ]
}


def get_preset(name: str) -> ModelPreset:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}") from None
