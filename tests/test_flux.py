"""FLUX.1-schnell (Table 9): the tiny pipeline samples deterministic, batch-independent images; the single-stream
block's split MLP branch is bit-identical; subsets of queries of RoPE joint attention are exact, in dual- and
single-stream blocks; the full-size architecture's MACs for 4 steps at 256×256."""
import copy

import numpy as np
import pytest
import torch

import models.base as base
from models import flux, get_adapter
from models.flux import QuerySubset
from models.weights import MissingWeightsError

PROMPTS = ["a red cube on a table", "a dog running on grass"]
SEEDS = [3, 4]
STEPS = 4


@pytest.fixture(scope="module")
def tiny():
    adapter = get_adapter("tiny_flux")
    return adapter, adapter.build("tiny", scheduler="flow_euler")


def sample(adapter, pipe, prompts=PROMPTS, seeds=SEEDS):
    return adapter.sample(pipe, prompts, seeds, num_steps=STEPS, guidance_scale=0.0)


def test_tiny_flux_samples_deterministic_uint8_images_as_the_plain_pipeline(tiny):
    adapter, pipe = tiny
    assert adapter.family == "flux" and len(adapter.blocks(pipe)) == 4
    assert adapter.blocks(pipe)[2] is pipe.transformer.single_transformer_blocks[0]
    assert adapter.cfg_halves(3.5) == adapter.denoiser_calls(3.5) == 1
    assert adapter.token_grid() == (8, 8) and adapter.text_token_count() == 16
    assert get_adapter("flux1_schnell_256").token_grid() == (16, 16)
    ours = sample(adapter, pipe)
    assert ours.shape == (2, 32, 32, 3) and ours.dtype == torch.uint8 and ours.float().std() > 10
    torch.testing.assert_close(pipe.scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))  # shift 1
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    plain = pipe(prompt=PROMPTS, height=32, width=32, num_inference_steps=STEPS, guidance_scale=0.0, generator=gens,
                 max_sequence_length=16, output_type="np").images
    np.testing.assert_array_equal(ours.numpy(), (plain * 255).round().astype(np.uint8))
    again = adapter.build("tiny", scheduler="flow_euler")  # same seed, same weights, same images
    torch.testing.assert_close(sample(adapter, again), ours, rtol=0, atol=0)


def test_the_pooled_clip_caption_is_taken_at_each_prompts_eos(tiny):
    _, pipe = tiny
    ids = pipe.tokenizer(["ab", "abcdef"], padding="max_length", max_length=pipe.tokenizer_max_length,
                         truncation=True, return_tensors="pt").input_ids
    out = pipe.text_encoder(ids)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[[0, 1], [2, 6]], rtol=0, atol=0)


def test_a_sample_does_not_depend_on_its_batch(tiny):
    adapter, pipe = tiny
    both = sample(adapter, pipe).int()
    alone = torch.cat([sample(adapter, pipe, [p], [s]) for p, s in zip(PROMPTS, SEEDS)]).int()
    assert (both - alone).abs().max() <= 1  # float noise of batched matmuls, at most one grey level


def test_the_split_single_stream_block_is_bit_identical_and_holds_no_weights_twice(tiny):
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    torch.manual_seed(0)
    plain = FluxSingleTransformerBlock(dim=32, num_attention_heads=2, attention_head_dim=16).eval()
    split = copy.deepcopy(plain)
    holder = torch.nn.Module()
    holder.single_transformer_blocks = torch.nn.ModuleList([split])
    flux.install_split_single_blocks(holder)
    assert isinstance(split.mlp_out, torch.nn.Module) and "mlp_out" not in dict(split.named_children())
    assert list(split.state_dict()) == list(plain.state_dict())
    assert len(list(split.parameters())) == len(list(plain.parameters()))
    seen = []
    split.mlp_out.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    x, ctx, temb = torch.randn(2, 12, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    rotary = (torch.randn(17, 16), torch.randn(17, 16))
    for a, b in zip(plain(x, ctx, temb, rotary), split(x, ctx, temb, rotary)):
        assert torch.equal(a, b)
    assert seen == [torch.Size([2, 17, 32])]

    class Count(ModelHook):  # diffusers' hooks (the engine's) wrap the instance forward, and unwrap back to it
        calls = 0

        def new_forward(self, module, *args, **kwargs):
            Count.calls += 1
            return self.fn_ref.original_forward(*args, **kwargs)

    HookRegistry.check_if_exists_or_initialize(split).register_hook(Count(), "count")
    assert torch.equal(split(x, ctx, temb, rotary)[1], plain(x, ctx, temb, rotary)[1]) and Count.calls == 1
    assert len(seen) == 2
    split._diffusers_hook.remove_hook("count")
    assert split.forward.__func__ is flux._split_single_forward
    twin = copy.deepcopy(split)  # the copy's mlp_out uses the copy's weights
    assert twin.mlp_out.block is twin

    # The whole pipeline: against one built from the same seed whose single blocks run diffusers' forward.
    adapter, pipe = tiny
    unsplit = adapter.build("tiny", scheduler="flow_euler")
    for block in unsplit.transformer.single_transformer_blocks:
        del block.forward  # the instance forward: back to FluxSingleTransformerBlock.forward
    kw = dict(num_steps=STEPS, guidance_scale=0.0)
    assert torch.equal(adapter.sample_float(pipe, PROMPTS, SEEDS, **kw),
                       adapter.sample_float(unsplit, PROMPTS, SEEDS, **kw))


def test_without_text_encoders_the_adapter_feeds_zero_captions_of_the_presets_shape(tiny):
    """The meta and random sources build no tokenizers or encoders (text=False)."""
    adapter, _ = tiny
    with base.seeded(0):
        pipe = adapter._assemble(base.new_scheduler("flow_euler"), text=False)
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    seen = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["encoder_hidden_states"].shape, kw["pooled_projections"].abs().sum())),
        with_kwargs=True)
    assert adapter.sample(pipe, ["ignored"] * 2, SEEDS, num_steps=2, guidance_scale=0.0).shape == (2, 32, 32, 3)
    assert seen == [((2, 16, 32), 0)] * 2


def _inputs(pipe, batch=2, text=16, side=8):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(0)
    dim = tr.config.num_attention_heads * tr.config.attention_head_dim
    img_ids = pipe._prepare_latent_image_ids(batch, side, side, "cpu", torch.float32)
    rotary = tr.pos_embed(torch.cat([torch.zeros(text, 3), img_ids]))
    return torch.randn(batch, side * side, dim, generator=g), torch.randn(batch, text, dim, generator=g), rotary, g


def _rows(x, idx):
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def test_subset_queries_of_a_dual_stream_block_equal_full_attention_at_those_tokens(tiny):
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    _, pipe = tiny
    attn = pipe.transformer.transformer_blocks[1].attn
    assert isinstance(attn.processor, flux.SubsetQueryFluxAttnProcessor)
    img, txt, rotary, g = _inputs(pipe)
    full_img, full_txt = attn(img, txt, None, rotary)
    reference = FluxAttnProcessor()(attn, img, txt, None, rotary)  # the plain call is diffusers' own
    assert torch.equal(full_img, reference[0]) and torch.equal(full_txt, reference[1])
    idx_img = torch.stack([torch.randperm(64, generator=g)[:10] for _ in range(2)])
    idx_txt = torch.stack([torch.randperm(16, generator=g)[:5] for _ in range(2)])
    rows = {}
    hooks = [getattr(attn, n).register_forward_hook(lambda m, a, o, n=n: rows.update({n: a[0].shape[1]}))
             for n in ("to_q", "add_q_proj")]
    sub_img, sub_txt = attn(img, txt, None, rotary, query_subset=QuerySubset(image=idx_img, text=idx_txt))
    for h in hooks:
        h.remove()
    assert rows == {"to_q": 10, "add_q_proj": 5}  # only the chosen rows are projected to queries
    torch.testing.assert_close(sub_img, _rows(full_img, idx_img), rtol=0, atol=1e-5)
    torch.testing.assert_close(sub_txt, _rows(full_txt, idx_txt), rtol=0, atol=1e-5)
    # One stream left None: all of its tokens are queries.
    sub_img, sub_txt = attn(img, txt, None, rotary, query_subset=QuerySubset(image=idx_img))
    torch.testing.assert_close(sub_img, _rows(full_img, idx_img), rtol=0, atol=1e-5)
    torch.testing.assert_close(sub_txt, full_txt, rtol=0, atol=1e-5)

    # Capture: post-rotary queries and keys in joint order [text; image]; the subset's queries are those rows.
    attn.processor.capture = cap = {}
    try:
        out = attn(img, txt, None, rotary)
        assert torch.equal(out[0], full_img) and torch.equal(out[1], full_txt)
        q, k = cap["q"], cap["k"]
        assert q.shape == k.shape == (2, 2, 80, 16) and cap["text_tokens"] == 16 and cap["q_text_tokens"] == 16
        attn(img, txt, None, rotary, query_subset=QuerySubset(image=idx_img, text=idx_txt))
        joint = torch.cat([idx_txt, 16 + idx_img], dim=1)
        picked = q.gather(2, joint[:, None, :, None].expand(-1, 2, -1, 16))
        torch.testing.assert_close(cap["q"], picked, rtol=0, atol=1e-6)
        assert torch.equal(cap["k"], k) and cap["q_text_tokens"] == 5
    finally:
        attn.processor.capture = None
    with pytest.raises(ValueError, match="joint for single-stream"):
        attn(img, txt, None, rotary, query_subset=QuerySubset(joint=idx_img))


def test_subset_queries_of_a_single_stream_block_equal_full_attention_at_those_tokens(tiny):
    _, pipe = tiny
    attn = pipe.transformer.single_transformer_blocks[1].attn
    img, txt, rotary, g = _inputs(pipe)
    x = torch.cat([txt, img], dim=1)  # the joint sequence
    full = attn(x, None, None, rotary)
    idx = torch.stack([torch.randperm(80, generator=g)[:12] for _ in range(2)])
    sub = attn(x, image_rotary_emb=rotary, query_subset=QuerySubset(joint=idx))
    assert sub.shape == (2, 12, 32)
    torch.testing.assert_close(sub, _rows(full, idx), rtol=0, atol=1e-5)
    for preset, stored in (({}, 0), ({"text_tokens": 16}, 16)):
        attn.processor.capture = cap = dict(preset)
        try:
            assert torch.equal(attn(x, None, None, rotary), full)
        finally:
            attn.processor.capture = None
        assert cap["q"].shape == cap["k"].shape == (2, 2, 80, 16) and cap["text_tokens"] == stored


def flux_macs_by_hand(steps=4, image=256, text=256):
    """FLUX.1-schnell's linear MACs per image from its dimensions (d = 3072, S = text + image tokens).

    Dual-stream block: q, k, v, out and a 4× MLP per token of either stream (12·S·d²) and two AdaLayerNormZero
    modulations (2 · 6d²). Single-stream block: q, k, v (3d²), proj_mlp (4d²) and proj_out (5d²) per token, and
    a 3-way modulation (3d²). Once per step: x_embedder and proj_out (64 channels per image token), the T5
    context embedder (4096 → d per text token), the timestep (256 → d → d) and pooled-caption (768 → d → d)
    embedders, and norm_out's 2-way modulation (2d²).
    """
    d, s = 3072, image + text
    blocks = 19 * (12 * s * d * d + 12 * d * d) + 38 * (12 * s * d * d + 3 * d * d)
    once = 2 * image * 64 * d + text * 4096 * d + (256 + 768) * d + 2 * d * d + 2 * d * d
    return steps * (blocks + once)


def test_full_size_flux_macs_for_four_steps_at_256_match_the_paper():
    from metrics.macs import count_macs

    adapter = get_adapter("flux1_schnell_256")
    pipe = adapter.build("meta", scheduler="flow_euler")
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(11.891e9, rel=1e-3)
    with count_macs(adapter.denoiser(pipe)) as tally:
        assert adapter.sample(pipe, ["x"], [0], num_steps=STEPS, guidance_scale=0.0) is None
    macs = tally.per_image(1, adapter.cfg_branches(0.0))
    assert macs["denoiser_calls"] == STEPS
    assert macs["macs_c1"] == flux_macs_by_hand() == 13_246_270_537_728
    assert macs["macs_c1"] == pytest.approx(13.246e12, rel=1e-2)  # the paper's Table 9: 13.247 T


def test_a_snapshot_without_its_components_names_the_download(tiny, tmp_path, monkeypatch):
    adapter = get_adapter("flux1_schnell_256")
    assert adapter.weight_repos() == ["black-forest-labs/FLUX.1-schnell"]
    monkeypatch.setattr(type(adapter), "_resolve", staticmethod(lambda repo: tmp_path))
    with pytest.raises(MissingWeightsError, match="hf download black-forest-labs/FLUX.1-schnell"):
        adapter.build("real", scheduler="flow_euler")
