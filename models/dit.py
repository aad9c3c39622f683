"""DiT (DiTTransformer2DModel, BasicTransformerBlock with ada_norm_zero; class-conditional, no cross-attention)."""
from __future__ import annotations

import torch

from models.base import ModelAdapter


class Adapter(ModelAdapter):
    family = "dit"
    sublayers = ("attn1", "ff")
    sublayer_kinds = {"attn1": "self_attn", "ff": "mlp"}

    def _assemble(self, scheduler, text: bool, folder=None):
        from diffusers import DiTPipeline, DiTTransformer2DModel

        return DiTPipeline(transformer=self._transformer(DiTTransformer2DModel, folder), vae=self._vae(),
                           scheduler=scheduler)

    def _load_real(self, repo, dtype):
        from diffusers import DiTPipeline

        return DiTPipeline.from_pretrained(self._resolve(repo), torch_dtype=dtype)

    def _call(self, pipe, labels, generators, num_steps, guidance_scale, grad=False):
        labels = [int(c) for c in labels]
        if not all(0 <= c < 1000 for c in labels):
            raise ValueError("DiT class labels must be ImageNet ids in [0, 1000)")
        # output_type="pt" keeps the images on the device (the pipeline's numpy path would fail on meta).
        return self._runner(pipe, grad)(class_labels=labels, guidance_scale=guidance_scale, generator=generators,
                    num_inference_steps=num_steps, output_type="pt").images
