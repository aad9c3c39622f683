"""DiT (DiTTransformer2DModel, BasicTransformerBlock with ada_norm_zero; class-conditional, no cross-attention)."""
from __future__ import annotations

import torch

from models.base import ModelAdapter, one_group


class Adapter(ModelAdapter):
    family = "dit"
    groups = one_group("transformer_blocks", ("attn1", "self_attn"), ("ff", "mlp"))

    def _assemble(self, scheduler, text: bool, folder=None):
        from diffusers import DiTPipeline, DiTTransformer2DModel

        return DiTPipeline(transformer=self._transformer(DiTTransformer2DModel, folder), vae=self._vae(),
                           scheduler=scheduler)

    def guide_channels(self, pipe, channels: int) -> None:
        """Guide only the first `channels` latent channels, as the official DiT sampler does (its
        forward_with_cfg guides 3 of 4 "for exact reproducibility"; diffusers' DiTPipeline guides all 4).
        The other latent channels of the unconditional rows are replaced by the conditional rows' own, so
        the pipeline's guidance uncond + s·(cond − uncond) leaves them at the conditional prediction: what
        the official sampler keeps for them. A forward hook on the transformer, after every other hook;
        it acts only on CFG batches, whose second half is DiT's null class."""
        tr = pipe.transformer
        latent = tr.config.in_channels
        if not 1 <= channels <= latent:
            raise ValueError(f"guided_channels must be in [1, {latent}] (the latent channels), got {channels!r}")
        if channels == latent:
            return
        null = tr.config.num_embeds_ada_norm

        def hook(module, args, kwargs, out):
            labels = kwargs.get("class_labels")
            sample = out.sample if hasattr(out, "sample") else out[0]
            n = sample.shape[0] // 2
            if labels is None or sample.shape[0] % 2 or sample.device.type == "meta" or not (labels[n:] == null).all():
                return out
            fixed = sample.clone()
            fixed[n:, channels:latent] = sample[:n, channels:latent]
            return type(out)(sample=fixed) if hasattr(out, "sample") else (fixed, *out[1:])

        tr.register_forward_hook(hook, with_kwargs=True)

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
