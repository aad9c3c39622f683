"""Registered model presets: pure data, importable without torch (the Snakefile and schema tests use it).

A preset fixes the architecture and where real weights live; the run settings (steps, scheduler,
guidance, dataset) live in config.yaml so the experiment matrix stays in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Architectures (diffusers constructor kwargs). Real ones follow diffusers' conversion scripts
# (scripts/convert_*_to_diffusers.py in the diffusers repository); tiny ones run on a CPU in seconds.
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
WAN_2_1_1_3B = dict(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers (scripts/convert_wan_to_diffusers.py)
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
WAN_VAE = dict(base_dim=96, z_dim=16)  # AutoencoderKLWan's defaults are Wan2.1's VAE (8× space, 4× time)
TINY_WAN_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,  # diffusers' Wan test VAE
                    temperal_downsample=[False, True, True])
PIXEL_VAE = dict(channels=3, block_out_channels=[1], scaling_factor=1.0)  # models.pixel_vae: latents are pixels
PROXY_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
FLUX_1_SCHNELL = dict(  # black-forest-labs/FLUX.1-schnell transformer/config.json (guidance-distilled: no guidance)
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(  # FLUX.1's VAE (vae/config.json): 16 latent channels, 8× space, no quant convs
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
TINY_FLUX_VAE = dict(TINY_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                     use_quant_conv=False, use_post_quant_conv=False)
# A tiny CLIP text tower for FLUX's pooled caption (CLIPTextConfig kwargs; vocabulary and special ids are the
# byte-level tokenizer's, set in models/flux.py). Its width is the transformer's pooled_projection_dim.
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str                        # adapter module in models/: pixart, dit, wan (flux later)
    resolution: int                    # output image side in pixels (video: the height)
    transformer: dict[str, Any]        # diffusers transformer kwargs
    vae: dict[str, Any]
    hub_id: str | None = None          # repo with the whole pipeline (None: tiny, built from config)
    transformer_hub_id: str | None = None  # repo whose `transformer/` overrides the pipeline's
    text_encoder: dict[str, Any] | None = None   # tiny T5 kwargs (tiny presets only)
    text_tokens: int = 120             # max_sequence_length of the caption encoder
    text_dim: int = 4096               # caption embedding width (T5-XXL)
    proxy: str | None = None           # trained CPU proxy: its committed folder under models/proxies/
    width: int | None = None           # output width where it differs from `resolution` (Wan: 480×832)
    frames: int = 1                    # video frames (Wan); 1 for image models
    fps: int = 16                      # frame rate the videos are written at for VBench (Wan2.1's own: 16)
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Second caption encoder's kwargs (FLUX: the tiny CLIP whose pooled output conditions the model; FluxPipeline
    # calls it `text_encoder` and the T5 of `text_encoder` above `text_encoder_2`).
    text_encoder_2: dict[str, Any] | None = None

    @property
    def is_tiny(self) -> bool:
        return self.hub_id is None

    @property
    def pixel_space(self) -> bool:
        return self.vae is PIXEL_VAE

    @property
    def is_video(self) -> bool:
        return self.frames > 1

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output in pixels."""
        return self.resolution, self.width or self.resolution

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
        ModelPreset(  # a CPU-sized DiT for speed benchmarks: 256 image tokens (latent 32×32, patch 2), width 512
            name="mid_dit", family="dit", resolution=64,
            transformer=dict(DIT_XL_2, num_attention_heads=8, attention_head_dim=64, num_layers=8, sample_size=32),
            vae=TINY_VAE, text_tokens=0, text_dim=0,
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
        # Table 3 at the paper's size: 256×256, 2 s at 8 fps. Wan's VAE compresses time by 4 and keeps the
        # first frame on its own, so a clip has 4k + 1 frames; 16 is not one (WanPipeline itself rounds 16
        # to 17), so 17: latent 5×32×32 -> 5 × 16 × 16 = 1,280 tokens (patch 1×2×2).
        ModelPreset(
            name="wan21_t2v_1_3b_256", family="wan", resolution=256, frames=17, fps=8,
            transformer=WAN_2_1_1_3B, vae=WAN_VAE, hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            text_tokens=512, text_dim=4096,
        ),
        ModelPreset(  # not the paper's: Wan2.1's default T2V setting, 480×832, 81 frames (benchmarks, GPU checks)
            name="wan21_t2v_1_3b", family="wan", resolution=480, width=832, frames=81,
            transformer=WAN_2_1_1_3B, vae=WAN_VAE, hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            text_tokens=512, text_dim=4096,
        ),
        ModelPreset(  # 64×64×9 frames -> latent 3×8×8 -> 48 tokens of 3 frames × 4×4 (patch 1×2×2)
            name="tiny_wan", family="wan", resolution=64, frames=9,
            transformer=dict(WAN_2_1_1_3B, num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64,
                             num_layers=3, rope_max_seq_len=32),
            vae=TINY_WAN_VAE, text_encoder=TINY_T5, text_tokens=16, text_dim=32,
        ),
        ModelPreset(
            name="tiny_dit", family="dit", resolution=32,
            transformer=dict(DIT_XL_2, num_attention_heads=2, attention_head_dim=16, num_layers=4, sample_size=16),
            vae=TINY_VAE, text_tokens=0, text_dim=0,
        ),
        # FLUX.1-schnell at the paper's 256×256 (Table 9): latent 32×32 packed in 2×2 patches -> 256 image tokens
        # after 256 T5 tokens; 4 steps, no CFG.
        ModelPreset(
            name="flux1_schnell_256", family="flux", resolution=256, transformer=FLUX_1_SCHNELL, vae=FLUX_VAE,
            hub_id="black-forest-labs/FLUX.1-schnell", text_tokens=256, text_dim=4096,
        ),
        ModelPreset(  # 32×32 -> latent 16×16 -> 8×8 = 64 image tokens after 16 text tokens
            name="tiny_flux", family="flux", resolution=32,
            transformer=dict(FLUX_1_SCHNELL, num_layers=2, num_single_layers=2, attention_head_dim=16,
                             num_attention_heads=2, joint_attention_dim=TINY_T5["d_model"],
                             pooled_projection_dim=TINY_CLIP["hidden_size"], axes_dims_rope=(4, 6, 6)),
            vae=TINY_FLUX_VAE, text_encoder=TINY_T5, text_encoder_2=TINY_CLIP, text_tokens=16,
            text_dim=TINY_T5["d_model"],
        ),
    ]
}


def get_preset(name: str) -> ModelPreset:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}") from None
