"""Wan2.1 (Table 3): separate CFG calls keep a cache per branch; token subsets of RoPE self-attention are
exact; the full-size architecture's MACs; the tiny model's videos through every method."""
import numpy as np
import pytest
import torch

from methods import make_method
from methods.engine import Engine
from methods.plan import Plan
from models import get_adapter

PROMPTS = ["a red cube turning", "a dog running on grass"]
SEEDS = [3, 4]
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def wan():
    adapter = get_adapter("tiny_wan")
    return adapter, adapter.build("tiny", scheduler="unipc_flow")


def sample(adapter, pipe, steps=4, guidance=GUIDANCE):
    return adapter.sample(pipe, PROMPTS, SEEDS, num_steps=steps, guidance_scale=guidance)


def test_tiny_wan_samples_uint8_videos_and_the_full_plan_is_the_plain_pipeline(wan):
    adapter, pipe = wan
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    plain = pipe(prompt=PROMPTS, negative_prompt="", num_inference_steps=4, guidance_scale=GUIDANCE, generator=gens,
                 height=64, width=64, num_frames=9, max_sequence_length=16, output_type="np").frames
    layout = adapter.layout(pipe)
    with Engine(adapter, pipe, Plan.full(4, layout.blocks, layout.sublayers), **adapter.engine_cfg(GUIDANCE)):
        ours = sample(adapter, pipe).numpy()
    assert ours.shape == (2, 9, 64, 64, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, (plain * 255).round().astype(np.uint8))
    assert ours.std() > 0


def test_subset_queries_of_rope_self_attention_equal_the_full_attention_at_those_tokens(wan):
    adapter, pipe = wan
    tr = pipe.transformer
    attn = tr.blocks[1].attn1
    g = torch.Generator().manual_seed(0)
    N = int(np.prod(adapter.token_grid()))
    x = torch.randn(2, N, tr.config.num_attention_heads * tr.config.attention_head_dim, generator=g)
    rotary = tr.rope(torch.zeros(2, 16, adapter.latent_frames(), 8, 8))
    assert rotary[0].shape[1] == N
    full = attn(x, None, None, rotary)
    idx = torch.stack([torch.randperm(N, generator=g)[:17] for _ in range(2)])
    named = {"hidden_states": x, "encoder_hidden_states": None, "attention_mask": None, "rotary_emb": rotary}
    extra = adapter.subset_attention_kwargs(adapter.groups[0].sublayers[0], named, {"image": idx})
    torch.testing.assert_close(extra["hidden_states"], x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])))
    sub = attn(extra["hidden_states"], extra["encoder_hidden_states"], None, extra["rotary_emb"])
    torch.testing.assert_close(sub, full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1])),
                               rtol=1e-5, atol=1e-6)


def test_each_cfg_branch_reuses_its_own_cache(wan):
    """Step 1 reuses every sub-layer. Cond and uncond then start from the same latents and gates, so only
    their own caches (different prompts) can make their predictions differ."""
    adapter, pipe = wan
    layout = adapter.layout(pipe)
    ratios = torch.ones(2, layout.blocks, len(layout.sublayers))
    ratios[1] = 0.0
    outputs = []
    handle = pipe.transformer.register_forward_hook(lambda m, a, o: outputs.append(o[0].clone()))
    try:
        with Engine(adapter, pipe, Plan(ratios, layout.sublayers), **adapter.engine_cfg(GUIDANCE)) as engine:
            sample(adapter, pipe, steps=2)
            assert engine.states == {} and engine._other_branches == {}  # freed after the last step
    finally:
        handle.remove()
    assert len(outputs) == 4  # 2 steps × (cond, uncond)
    assert (outputs[2] - outputs[3]).abs().max() > 1e-4


def test_an_engine_told_of_one_call_per_step_refuses_the_second_branch_as_a_step_past_the_plan(wan):
    adapter, pipe = wan
    layout = adapter.layout(pipe)
    with Engine(adapter, pipe, Plan.full(2, layout.blocks, layout.sublayers), branches=1):
        with pytest.raises(RuntimeError, match="called for step 2 but the plan has 2 steps"):
            sample(adapter, pipe, steps=2)


@pytest.mark.parametrize("name, settings", [
    ("fora", {"interval": 2}), ("deepcache", {"interval": 2}), ("taylorseer", {"interval": 2}),
    ("toca", {"fresh_ratio": 0.3, "threshold": 3, "grid": 2}), ("duca", {"fresh_ratio": 0.75, "threshold": 3, "grid": 2}),
])
def test_every_static_method_runs_on_wan_and_stays_near_the_full_model(wan, name, settings):
    adapter, pipe = wan
    full = sample(adapter, pipe, steps=6).float()
    method = make_method(name, **settings)
    with Engine(adapter, pipe, method.plan(6, adapter.layout(pipe)), method.ranking(), **adapter.engine_cfg(GUIDANCE)):
        ours = sample(adapter, pipe, steps=6).float()
    err = (ours - full).abs().mean().item()
    assert 0 < err < 5, err  # changed, but a few grey levels from the full model (of 255)


def test_dicache_decides_per_cfg_branch_on_wan(wan):
    """DiCache's run-time controller: one per branch (each probes its own stream), one record of runs."""
    adapter, pipe = wan
    method = make_method("dicache", threshold=0.3)
    layout = adapter.layout(pipe)
    full = adapter.sample(pipe, PROMPTS[:1], SEEDS[:1], num_steps=6, guidance_scale=GUIDANCE).float()
    engine = Engine(adapter, pipe, method.plan(6, layout), controller=method.controller(6, layout.blocks),
                    **adapter.engine_cfg(GUIDANCE))
    cond, uncond = engine.controllers
    assert cond is not uncond and cond.runs is uncond.runs
    seen = []
    real_run_block = type(cond).run_block
    def spy(self, step, block, *a):  # noqa: E306
        seen.append((id(self), step)) if block == 0 else None
        return real_run_block(self, step, block, *a)
    type(cond).run_block = spy
    try:
        with engine:
            ours = adapter.sample(pipe, PROMPTS[:1], SEEDS[:1], num_steps=6, guidance_scale=GUIDANCE).float()
    finally:
        type(cond).run_block = real_run_block
    assert seen == [(id(c), s) for s in range(6) for c in (cond, uncond)]   # cond, then uncond, every step
    assert len(cond.runs) == 2 and all(1 <= r <= 6 for r in cond.runs)     # one entry per branch
    assert min(cond.runs) < 6                                               # some step was skipped
    err = (ours - full).abs().mean().item()
    assert 0 < err < 5, err


def wan_macs_by_hand(tokens: int, text_tokens: int = 512) -> tuple[int, int]:
    """Wan2.1-1.3B's MACs per forward (one CFG branch) from its dimensions: (linear+conv, attention matmuls).

    Per block: self-attention q, k, v, out over the video tokens (4·N·d²); cross-attention q, out over
    them and k, v over the text (2·N·d² + 2·T·d²); the FFN (2·N·d·F). Once per forward: the text embedder
    (T·(4096·d + d²)), the time embedder and its 6-way projection, the patch conv and proj_out (N·64·d
    each: 16 channels × a 1×2×2 patch). Attention: QKᵀ and AV, N² · d (self) and N · T · d (cross), twice.
    """
    d, ffn, blocks, text, freq, patch = 1536, 8960, 30, 4096, 256, 16 * 4
    n, t = tokens, text_tokens
    per_block = 6 * n * d * d + 2 * t * d * d + 2 * n * d * ffn
    once = t * (text * d + d * d) + (freq * d + d * d + d * 6 * d) + 2 * n * patch * d
    attention = blocks * (2 * n * n * d + 2 * n * t * d)
    return blocks * per_block + once, attention


@pytest.mark.parametrize("model, grid, c1", [
    # Table 3 at the paper's size: 256×256, 17 frames -> 5 latent frames × 16 rows, 16 columns = 1,280 tokens
    ("wan21_t2v_1_3b_256", (5 * 16, 16), 1_677.722e9),
    # Wan2.1's default 480×832×81: 21 latent frames × 30 rows, 52 columns = 32,760 tokens
    ("wan21_t2v_1_3b", (21 * 30, 52), 41_047e9),
])
def test_full_size_wan_macs_per_branch_and_step_match_the_hand_count(model, grid, c1):
    """MACs of one step counted on the meta device: per branch (macs_c1) and with both CFG calls and
    attention (macs_total), equal to the count from Wan2.1-1.3B's dimensions."""
    from metrics.macs import count_macs

    adapter = get_adapter(model)
    assert adapter.token_grid() == grid
    tokens = grid[0] * grid[1]
    pipe = adapter.build("meta", scheduler="unipc_flow")
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(1.419e9, rel=1e-3)
    with count_macs(adapter.denoiser(pipe)) as tally:
        assert adapter.sample(pipe, ["x"], [0], num_steps=1, guidance_scale=GUIDANCE) is None
    macs = tally.per_image(1, adapter.cfg_branches(GUIDANCE))
    linear, attention = wan_macs_by_hand(tokens)
    assert macs["denoiser_calls"] == 2
    assert macs["macs_c1"] == pytest.approx(c1, rel=1e-4)
    assert macs["macs_c1"] == pytest.approx(linear, rel=1e-6)
    assert macs["macs_total"] == pytest.approx(2 * (linear + attention), rel=1e-6)


def test_video_shards_export_as_vbench_names_them_resumably_and_images_are_refused(tmp_path):
    import imageio.v3 as iio

    from dsbench.samples import shard_path, write_shard
    from dsbench.videos import export_videos

    rng = np.random.default_rng(0)
    videos = np.repeat(rng.integers(0, 256, (3, 1, 16, 16, 3), dtype=np.uint8), 5, axis=1).repeat(2, 2).repeat(2, 3)
    write_shard(shard_path(tmp_path / "s", 0), videos[:2], [0, 1], [7, 8], {})
    write_shard(shard_path(tmp_path / "s", 1), videos[2:], [2], [9], {})
    names = ["a cat-0.mp4", "a cat-1.mp4", "a dog-0.mp4"]
    out = export_videos(tmp_path / "s", 3, 2, names, tmp_path / "v")
    assert sorted(p.name for p in out.iterdir()) == sorted(names)        # no temporary file left behind
    back = iio.imread(out / "a dog-0.mp4")
    assert back.shape == (5, 32, 32, 3) and np.abs(back.astype(float) - videos[2]).mean() < 20  # lossy H.264
    stamp = (out / "a cat-0.mp4").stat().st_mtime_ns
    export_videos(tmp_path / "s", 3, 2, names, tmp_path / "v")             # a rerun keeps what is there
    assert (out / "a cat-0.mp4").stat().st_mtime_ns == stamp
    write_shard(shard_path(tmp_path / "i", 0), videos[:1, 0], [0], [7], {})
    with pytest.raises(ValueError, match="holds images, not videos"):
        export_videos(tmp_path / "i", 1, 1, ["x-0.mp4"], tmp_path / "w")
    with pytest.raises(ValueError, match="2 file names for 3 samples"):
        export_videos(tmp_path / "s", 3, 2, names[:2], tmp_path / "v")
