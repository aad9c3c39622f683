"""Wan2.1 text-to-video (WanTransformer3DModel, WanTransformerBlock; Table 3).

Two things set Wan apart from PixArt and DiT for the engine:
- WanPipeline runs the cond and uncond branches as two denoiser calls per step, so caches are kept per
  branch (`denoiser_calls`), as the official caching ports do (state indexed by call count mod 2).
- Self-attention applies RoPE to queries and keys. Computing a subset of the tokens takes the queries'
  rotary angles from those tokens and the keys' from all of them (`SubsetRotary`), which diffusers'
  WanAttnProcessor cannot express: `SubsetQueryWanAttnProcessor` below adds that case.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from methods.calls import gather
from models.base import ModelAdapter, one_group, timestep_to_meta
from models.pixart import tiny_text_encoder
from models.weights import MissingWeightsError


class SubsetRotary(NamedTuple):
    """RoPE (cos, sin) for queries of a token subset and for keys of every token."""
    query: tuple[torch.Tensor, torch.Tensor]
    key: tuple[torch.Tensor, torch.Tensor]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on interleaved pairs (x0, x1) -> (x0·cos − x1·sin, x0·sin + x1·cos); x: (B, N, heads, D)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).type_as(x)


def _processor_class():
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class SubsetQueryWanAttnProcessor(WanAttnProcessor):
        """WanAttnProcessor, plus self-attention whose queries come from a token subset (`SubsetRotary`).

        Written here because no diffusers processor takes separate query and key positions; the plain
        call (a (cos, sin) tuple or None) is diffusers' own code path, untouched.
        """

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
            if not isinstance(rotary_emb, SubsetRotary):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
            if attn.add_k_proj is not None or encoder_hidden_states is None or attn.fused_projections:
                raise ValueError("SubsetRotary is for unfused text-to-video self-attention with keys from every token")
            q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
            k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1))
            v = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            q, k = _rope(q, *rotary_emb.query), _rope(k, *rotary_emb.key)
            out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend)
            out = attn.to_out[0](out.flatten(2, 3).type_as(q))
            return attn.to_out[1](out)

    return SubsetQueryWanAttnProcessor


def install_subset_attention(transformer) -> None:
    cls = _processor_class()
    for block in transformer.blocks:
        block.attn1.set_processor(cls())


class Adapter(ModelAdapter):
    family = "wan"
    latent_format = "BCFHW"
    groups = one_group("blocks", ("attn1", "self_attn"), ("attn2", "cross_attn"), ("ffn", "mlp"))

    def _assemble(self, scheduler, text: bool, folder=None):
        from diffusers import WanPipeline, WanTransformer3DModel

        tok = enc = None
        if text:
            tok, enc = tiny_text_encoder(self.preset.text_encoder)  # T5 for umT5: same interface
        pipe = WanPipeline(tokenizer=tok, text_encoder=enc, vae=self._vae(),
                           transformer=self._transformer(WanTransformer3DModel, folder), scheduler=scheduler)
        install_subset_attention(pipe.transformer)
        return pipe

    def _vae(self):
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(**self.preset.vae)

    def _load_real(self, repo, dtype):
        from diffusers import AutoencoderKLWan, WanPipeline

        path = self._resolve(repo)
        try:  # Wan's VAE runs in fp32 (the model card's recipe)
            vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
            pipe = WanPipeline.from_pretrained(path, vae=vae, torch_dtype=dtype)
        except OSError as e:  # a snapshot without some component
            raise MissingWeightsError(f"incomplete Wan snapshot {repo!r}: {e}") from e
        install_subset_attention(pipe.transformer)
        return pipe

    # ---- structure ------------------------------------------------------------------------------
    def cfg_halves(self, guidance_scale: float) -> int:
        return 1  # each denoiser call is one branch

    def denoiser_calls(self, guidance_scale: float) -> int:
        return 2 if guidance_scale > 1 else 1

    def latent_frames(self) -> int:
        return (self.preset.frames - 1) // 2 ** sum(self._temporal_downsample()) + 1

    def _temporal_downsample(self) -> list[bool]:
        return self.preset.vae.get("temperal_downsample", [False, True, True])  # AutoencoderKLWan's default

    def token_grid(self) -> tuple[int, int]:
        """Frames stacked along the rows, (frames · h, w): a cell of the spatial bonus (side dividing h)
        then never straddles two frames."""
        scale = 2 ** len(self._temporal_downsample())
        _, ph, pw = self.preset.transformer["patch_size"]
        height, width = self.preset.size
        return self.latent_frames() * (height // scale // ph), width // scale // pw

    def prepare(self, pipe) -> None:
        install_subset_attention(pipe.transformer)

    def grid_from_call(self, args, kwargs):
        """Latents (B, C, frames, H, W): frames stacked along the rows, as token_grid."""
        x = kwargs.get("hidden_states", args[0] if args else None)
        _, ph, pw = self.preset.transformer["patch_size"]
        return x.shape[2] * (x.shape[3] // ph), x.shape[4] // pw

    def subset_attention_kwargs(self, sub, named: dict, picks: dict) -> dict:
        (_, idx), = picks.items()
        x = named["hidden_states"]
        cos, sin = named["rotary_emb"]
        take = lambda t: gather(t.expand(idx.shape[0], -1, -1, -1), idx)  # noqa: E731
        return {"hidden_states": gather(x, idx),
                "encoder_hidden_states": x, "rotary_emb": SubsetRotary((take(cos), take(sin)), (cos, sin))}

    # ---- sampling -------------------------------------------------------------------------------
    def _call(self, pipe, prompts, generators, num_steps, guidance_scale, grad=False):
        n, (height, width) = len(prompts), self.preset.size
        kwargs = dict(prompt=prompts, negative_prompt="", output_type="pt")
        if pipe.text_encoder is None:  # meta device: no tokenizer; feed embeddings of the real shape
            dev, L, D = pipe.transformer.device, self.preset.text_tokens, self.preset.text_dim
            emb = torch.zeros(n, L, D, device=dev)
            # The VAE's causal 3-D convolutions do not run on meta: stop at the latents (MACs are the denoiser's).
            kwargs = dict(prompt_embeds=emb, negative_prompt_embeds=emb, output_type="latent")
        meta = pipe.transformer.device.type == "meta"
        # On meta the scheduler keeps its timesteps on the host (models.base.host_timesteps); the pipeline
        # hands them to the denoiser as they are, so move them to the device it computes on.
        hook = pipe.transformer.register_forward_pre_hook(timestep_to_meta, with_kwargs=True) if meta else None
        try:
            return self._runner(pipe, grad)(
                **kwargs, num_inference_steps=num_steps, guidance_scale=guidance_scale, generator=generators,
                height=height, width=width, num_frames=self.preset.frames,
                max_sequence_length=self.preset.text_tokens,
            ).frames
        finally:
            if hook is not None:
                hook.remove()
