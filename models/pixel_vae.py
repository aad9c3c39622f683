"""An identity "VAE" so the real DiT/PixArt pipelines can diffuse directly in pixel space.

Groundwork for the CPU proxy models (issue 4): a 32×32 RGB image with patch size 2 gives 256 tokens
without training an autoencoder. `decode` returns its input, so the pipelines' own post-processing
((x / 2 + 0.5).clamp(0, 1)) maps the denoised [-1, 1] pixels to images unchanged.
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput


class PixelSpaceVAE(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, channels: int = 3, block_out_channels: tuple[int, ...] = (1,), scaling_factor: float = 1.0):
        super().__init__()
        # block_out_channels of length 1 makes the pipelines' vae_scale_factor 1 (latents are pixels).
        self.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)

    def encode(self, x: torch.Tensor):
        return x

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_):
        return DecoderOutput(sample=z) if return_dict else (z,)

    def enable_slicing(self) -> None:
        """Decoding is per-pixel identity, hence already batch-invariant."""
