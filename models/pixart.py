"""PixArt-alpha (PixArtTransformer2DModel, BasicTransformerBlock with ada_norm_single)."""
from __future__ import annotations

import torch

from models.base import ModelAdapter, one_group
from models.weights import MissingWeightsError


def tiny_text_encoder(t5_kwargs: dict):
    """Offline stand-in for T5-XXL: a byte-level tokenizer (no vocab file) and a tiny seeded T5 encoder."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tok = ByT5Tokenizer()
    enc = T5EncoderModel(T5Config(vocab_size=len(tok), **t5_kwargs)).eval()
    return tok, enc


class Adapter(ModelAdapter):
    family = "pixart"
    groups = one_group("transformer_blocks", ("attn1", "self_attn"), ("attn2", "cross_attn"), ("ff", "mlp"))

    def _assemble(self, scheduler, text: bool, folder=None):
        from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

        tok = enc = None
        if text and self.preset.proxy:
            from models.proxy import text_encoder

            tok, enc = text_encoder(self.preset.text_encoder, self.preset.text_tokens,
                                    folder=folder / "text_encoder" if folder else None)
        elif text:
            tok, enc = tiny_text_encoder(self.preset.text_encoder)
        return PixArtAlphaPipeline(
            tokenizer=tok, text_encoder=enc, vae=self._vae(),
            transformer=self._transformer(PixArtTransformer2DModel, folder), scheduler=scheduler,
        )

    def _load_real(self, repo, dtype):
        from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

        kwargs = {}
        if self.preset.transformer_hub_id and repo == self.preset.hub_id:
            kwargs["transformer"] = PixArtTransformer2DModel.from_pretrained(
                self._resolve(self.preset.transformer_hub_id), subfolder="transformer", torch_dtype=dtype)
        try:
            return PixArtAlphaPipeline.from_pretrained(self._resolve(repo), torch_dtype=dtype, **kwargs)
        except OSError as e:  # a snapshot without some component
            raise MissingWeightsError(f"incomplete PixArt snapshot {repo!r}: {e}") from e

    def _call(self, pipe, prompts, generators, num_steps, guidance_scale, grad=False):
        n, res = len(prompts), self.preset.resolution
        kwargs = dict(prompt=prompts, negative_prompt="")
        if pipe.text_encoder is None:  # meta device: no tokenizer; feed embeddings of the real shape
            dev, L, D = pipe.transformer.device, self.preset.text_tokens, self.preset.text_dim
            emb, mask = torch.zeros(n, L, D, device=dev), torch.ones(n, L, device=dev)
            kwargs = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None,
                          negative_prompt_embeds=emb, negative_prompt_attention_mask=mask)
        return self._runner(pipe, grad)(
            **kwargs, num_inference_steps=num_steps, guidance_scale=guidance_scale, generator=generators,
            height=res, width=res, use_resolution_binning=False, clean_caption=False,
            max_sequence_length=self.preset.text_tokens, output_type="pt",
        ).images
