"""FLUX.1-schnell (FluxTransformer2DModel: 19 dual-stream FluxTransformerBlocks, then 38 single-stream
FluxSingleTransformerBlocks; Table 9).

What sets FLUX apart for the engine:
- No CFG: schnell is guidance-distilled (`guidance_embeds=False`): one denoiser call per step, one batch row
  per image.
- Two token streams attended jointly, text first: the T5 caption tokens and the image tokens (2×2 patches of
  the 8× VAE's 16-channel latent, packed into 64 channels). Dual-stream blocks keep weights per stream;
  single-stream blocks run on the joint sequence [text; image].
- The single-stream block runs attention and an MLP in parallel and projects their concatenation inline, so
  its MLP branch is no sub-module: `install_split_single_blocks` gives it one (`block.mlp_out`) hooks can hold.
- RoPE on queries and keys by joint position: `SubsetQueryFluxAttnProcessor` computes the queries of a token
  subset with their own angles and takes keys and values from every token of both streams.
"""
from __future__ import annotations

import functools
import types
from pathlib import Path
from typing import NamedTuple

import torch

from methods.calls import gather
from models.base import BlockGroup, ModelAdapter, Sublayer, timestep_to_meta
from models.pixart import tiny_text_encoder
from models.weights import MissingWeightsError, fetch_hint

# The block groups (see models.base.BlockGroup). Both kinds of block take the image stream as
# `hidden_states` and the text stream as `encoder_hidden_states` and return (text, image).
# Dual-stream: joint attention over [text; image] with one output per stream, and an MLP per stream.
# Single-stream: attention over the joint sequence, and the MLP branch fused with the attention output
# by proj_out (`mlp_out`, split out by install_split_single_blocks so it has a module boundary).
_TEXT_ATTENTION = tuple((m, "text") for m in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
DUAL = BlockGroup("transformer_blocks", (
    Sublayer("attn", "self_attn", streams=("image", "text"), args=("hidden_states", "encoder_hidden_states"),
             full_modules=("to_k", "to_v", "add_k_proj", "add_v_proj"), stream_modules=_TEXT_ATTENTION),
    Sublayer("ff", "mlp"),
    Sublayer("ff_context", "mlp", streams=("text",)),
), streams=("image", "text"), args=("hidden_states", "encoder_hidden_states"), returns=("text", "image"))
SINGLE = BlockGroup("single_transformer_blocks", (
    Sublayer("attn", "self_attn", streams=("joint",)),
    Sublayer("mlp_out", "mlp", streams=("joint",), aligned=("attn_output",), owns=("proj_mlp", "proj_out")),
), streams=("image", "text"), args=("hidden_states", "encoder_hidden_states"), returns=("text", "image"))


def tiny_clip(clip_kwargs: dict):
    """Offline stand-in for CLIP ViT-L/14's text tower: a byte-level tokenizer (no vocab file) and a tiny seeded
    CLIPTextModel. FluxPipeline only reads its pooled output, which CLIP takes at the first `eos_token_id`:
    ByT5's eos (id 1), which the tokenizer appends to every caption (and keeps when it truncates)."""
    from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel

    tok = ByT5Tokenizer(model_max_length=clip_kwargs["max_position_embeddings"])  # FluxPipeline pads CLIP to this
    cfg = CLIPTextConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                         eos_token_id=tok.eos_token_id, **clip_kwargs)
    return tok, CLIPTextModel(cfg).eval()


# ---- the single-stream block's MLP branch as a module --------------------------------------------------------
class SingleBlockMLPOut(torch.nn.Module):
    """`proj_out(cat([attn_output, act_mlp(proj_mlp(x))]))` of one FluxSingleTransformerBlock: its MLP branch and
    the output projection it shares with attention. The weights stay the block's (it is held outside
    `_modules`), so they appear once in state_dict() and parameters(), and move with the block."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "block", block)  # not a child; a plain reference, so deepcopy follows it

    def forward(self, hidden_states: torch.Tensor, attn_output: torch.Tensor) -> torch.Tensor:
        b = self.block
        return b.proj_out(torch.cat([attn_output, b.act_mlp(b.proj_mlp(hidden_states))], dim=2))


def _split_single_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                          joint_attention_kwargs=None):
    """FluxSingleTransformerBlock.forward with its MLP branch and output projection called through `mlp_out`:
    the same ops on the same inputs (the MLP branch just runs after attention), so bit-identical outputs."""
    text_len = encoder_hidden_states.shape[1]
    residual = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    norm_hidden_states, gate = self.norm(residual, emb=temb)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    out = residual + gate.unsqueeze(1) * self.mlp_out(norm_hidden_states, attn_output)
    if out.dtype == torch.float16:
        out = out.clip(-65504, 65504)
    return out[:, :text_len], out[:, text_len:]


def install_split_single_blocks(transformer) -> None:
    """Give every single-stream block a hookable `mlp_out` and a forward that calls it (once, at build)."""
    for block in transformer.single_transformer_blocks:
        if "mlp_out" not in block.__dict__:
            object.__setattr__(block, "mlp_out", SingleBlockMLPOut(block))  # not registered as a child
            block.forward = types.MethodType(_split_single_forward, block)


# ---- attention for a subset of queries -------------------------------------------------------------------------
class QuerySubset(NamedTuple):
    """Token indices (B, k) whose queries an attention call computes; keys and values come from every token.

    Dual-stream blocks: `image` indexes the image stream, `text` the text stream; None takes all of that
    stream's tokens as queries. Single-stream blocks: `joint` indexes the joint sequence [text; image].
    """
    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    joint: torch.Tensor | None = None


def _take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return x if idx is None else gather(x, idx)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb (use_real, interleaved pairs) with angles per batch row: x (B, S, heads, D),
    cos and sin (1 or B, S, D)."""
    cos, sin = cos[:, :, None].to(x.device), sin[:, :, None].to(x.device)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@functools.cache
def _processor_class():
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class SubsetQueryFluxAttnProcessor(FluxAttnProcessor):
        """FluxAttnProcessor, plus queries from a token subset (`query_subset=QuerySubset(...)`) and a capture of
        the queries and keys (`capture`: a dict, or None).

        The plain call (no subset, no capture) is diffusers' own code path, untouched. With a subset, only the
        chosen rows are projected to queries (the MAC saving), each rotated by its own joint position's angles;
        a dual-stream block returns (image_out (B, k_img, D), text_out (B, k_txt, D)) after to_out /
        to_add_out, a single-stream block the raw attention output of its chosen tokens (B, k, D).

        `capture`, when a dict, receives "q" and "k": the post-norm, post-rotary queries and keys of the call,
        (B, heads, L, head_dim), in joint order [text; image] (with a subset, q holds the chosen queries, and
        in a dual-stream block its first "q_text_tokens" rows are text); and "text_tokens", the text length of
        the keys (a single-stream block sees one joint sequence: it keeps a preset value, else stores 0).
        """

        def __init__(self):
            super().__init__()
            self.capture: dict | None = None

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None, query_subset: QuerySubset | None = None):
            if query_subset is None and self.capture is None:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            if attn.fused_projections:
                raise ValueError("query subsets need unfused q/k/v projections")
            sub, dual = query_subset or QuerySubset(), encoder_hidden_states is not None
            if (sub.joint is not None) if dual else (sub.image is not None or sub.text is not None):
                raise ValueError("QuerySubset: image/text for dual-stream blocks, joint for single-stream blocks")
            heads = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
            batch, n_text = hidden_states.shape[0], encoder_hidden_states.shape[1] if dual else 0

            # Keys and values from every token of both streams, joint order [text; image].
            key, value = attn.norm_k(heads(attn.to_k(hidden_states))), heads(attn.to_v(hidden_states))
            if dual:
                key = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))), key], dim=1)
                value = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), value], dim=1)

            # Queries of the chosen rows only, and their positions in the joint sequence.
            if dual:
                text_q = attn.norm_added_q(heads(attn.add_q_proj(_take(encoder_hidden_states, sub.text))))
                query = torch.cat([text_q, attn.norm_q(heads(attn.to_q(_take(hidden_states, sub.image))))], dim=1)
                parts, n_text_q = [(sub.text, n_text, 0), (sub.image, hidden_states.shape[1], n_text)], text_q.shape[1]
            else:
                query = attn.norm_q(heads(attn.to_q(_take(hidden_states, sub.joint))))
                parts, n_text_q = [(sub.joint, hidden_states.shape[1], 0)], 0

            if image_rotary_emb is not None:
                cos, sin = image_rotary_emb  # (S, D) for the joint sequence
                key = _rope(key, cos[None], sin[None])
                if all(idx is None for idx, _, _ in parts):
                    query = _rope(query, cos[None], sin[None])
                else:
                    pos = torch.cat([(torch.arange(n, device=cos.device).expand(batch, -1) if idx is None
                                      else idx.to(cos.device)) + offset for idx, n, offset in parts], dim=1)
                    query = _rope(query, cos[pos], sin[pos])

            if self.capture is not None:
                self.capture["q"], self.capture["k"] = query.detach().transpose(1, 2), key.detach().transpose(1, 2)
                if dual:
                    self.capture["text_tokens"], self.capture["q_text_tokens"] = n_text, n_text_q
                else:
                    self.capture.setdefault("text_tokens", 0)

            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                        parallel_config=self._parallel_config)
            out = out.flatten(2, 3).to(query.dtype)
            if not dual:
                return out
            text_out, image_out = out.split_with_sizes([n_text_q, out.shape[1] - n_text_q], dim=1)
            image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
            return image_out, attn.to_add_out(text_out.contiguous())

    return SubsetQueryFluxAttnProcessor


def __getattr__(name):  # the processor class, defined on first use (diffusers imports lazily, as in models.wan)
    if name == "SubsetQueryFluxAttnProcessor":
        return _processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_subset_attention(transformer) -> None:
    cls = _processor_class()
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.attn.set_processor(cls())


def _prepare(transformer) -> None:
    install_split_single_blocks(transformer)
    install_subset_attention(transformer)


# ---- the adapter -----------------------------------------------------------------------------------------------
class Adapter(ModelAdapter):
    family = "flux"
    groups = (DUAL, SINGLE)

    def _assemble(self, scheduler, text: bool, folder=None):
        from diffusers import FluxPipeline, FluxTransformer2DModel

        tok = enc = tok_t5 = enc_t5 = None
        if text:  # FluxPipeline's text_encoder is CLIP (pooled caption), text_encoder_2 the T5 (tokens)
            tok, enc = tiny_clip(self.preset.text_encoder_2)
            tok_t5, enc_t5 = tiny_text_encoder(self.preset.text_encoder)
        pipe = FluxPipeline(scheduler=scheduler, vae=self._vae(), text_encoder=enc, tokenizer=tok,
                            text_encoder_2=enc_t5, tokenizer_2=tok_t5,
                            transformer=self._transformer(FluxTransformer2DModel, folder))
        _prepare(pipe.transformer)
        return pipe

    def _load_real(self, repo, dtype):
        from diffusers import FluxPipeline

        path = self._resolve(repo)
        try:
            pipe = FluxPipeline.from_pretrained(path, dtype=dtype)
        except OSError as e:  # a snapshot without some component
            hub = self.preset.hub_id if Path(repo).expanduser().is_dir() else repo
            raise MissingWeightsError(
                f"incomplete FLUX snapshot {repo!r}: {e}; fetch it with: {fetch_hint(hub)}") from e
        _prepare(pipe.transformer)
        return pipe

    # ---- structure ------------------------------------------------------------------------------------------
    def prepare(self, pipe) -> None:
        _prepare(pipe.transformer)

    def grid_from_call(self, args, kwargs):
        """Packed latents carry no grid: read it from the image tokens' (frame, row, col) ids."""
        ids = kwargs["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1

    def subset_attention_kwargs(self, sub, named: dict, picks: dict) -> dict:
        """Queries of the chosen tokens of each stream; keys and values of every token, with their own
        rotary angles (SubsetQueryFluxAttnProcessor)."""
        return {"query_subset": QuerySubset(**picks)}

    def attention_segments(self, sub, capture: dict) -> dict[str, tuple[int, int]]:
        L, text = capture["k"].shape[2], capture["text_tokens"]
        if "joint" in sub.streams:
            return {"joint": (0, L)}
        return {"text": (0, text), "image": (text, L - text)}

    def stream_tokens(self) -> dict[str, int]:
        h, w = self.token_grid()
        return {"image": h * w, "text": self.text_token_count(), "joint": h * w + self.text_token_count()}

    def cfg_halves(self, guidance_scale: float) -> int:
        return 1  # guidance-distilled: no CFG batch

    def denoiser_calls(self, guidance_scale: float) -> int:
        return 1

    def token_grid(self) -> tuple[int, int]:
        """Image tokens: the latent packed in 2×2 patches (256 px -> latent 32 -> 16 × 16 tokens)."""
        side = self.preset.latent_size // 2
        return side, side

    def text_token_count(self) -> int:
        """Text tokens ahead of the image tokens in the joint sequence (max_sequence_length)."""
        return self.preset.text_tokens

    # ---- sampling -------------------------------------------------------------------------------------------
    def _call(self, pipe, prompts, generators, num_steps, guidance_scale, grad=False):
        n, res = len(prompts), self.preset.resolution
        dev = pipe.transformer.device
        meta = dev.type == "meta"
        kwargs = dict(prompt=prompts)
        if pipe.text_encoder is None:  # meta device / random weights: no tokenizers; embeddings of the real shape
            dtype, cfg = pipe.transformer.dtype, pipe.transformer.config
            kwargs = dict(prompt_embeds=torch.zeros(n, self.preset.text_tokens, cfg.joint_attention_dim,
                                                    device=dev, dtype=dtype),
                          pooled_prompt_embeds=torch.zeros(n, cfg.pooled_projection_dim, device=dev, dtype=dtype))
        # On meta: stop at the latents (MACs are the denoiser's), and hand the denoiser its timestep on meta
        # (a host scheduler, models.base.host_timesteps, keeps them on the CPU).
        hook = pipe.transformer.register_forward_pre_hook(timestep_to_meta, with_kwargs=True) if meta else None
        try:
            return self._runner(pipe, grad)(
                **kwargs, height=res, width=res, num_inference_steps=num_steps, guidance_scale=guidance_scale,
                generator=generators, max_sequence_length=self.preset.text_tokens,
                output_type="latent" if meta else "pt",
            ).images
        finally:
            if hook is not None:
                hook.remove()
