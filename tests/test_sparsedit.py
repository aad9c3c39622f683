"""SparseDiT: layer plan, Poolingformer, SDTM token paths, DiT weight conversion, temporal density, pipeline."""
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.attention import BasicTransformerBlock

from models.base import seeded
from models.sparsedit import SparseDiTTransformer2DModel, convert_dit, layer_roles
from models.sparsedit_blocks import GenerationBlock, Poolingformer, RecoveryBlock, pool_tokens, upsample_tokens
from models.sparsedit_density import TemporalDensity, sparse_side

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, sample_size=16)  # 8×8 tokens


def tiny_dit(num_layers: int, seed: int = 0) -> DiTTransformer2DModel:
    with seeded(seed):
        return DiTTransformer2DModel(**TINY, num_layers=num_layers).eval()


def inputs(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    labels = torch.tensor([3, 7, 1000, 1000][:batch])  # CFG batch: cond rows, then the null class
    return x, torch.full((batch,), 500), labels


# ---- layer plan -------------------------------------------------------------------------------------
def test_dit_xl_plan_assigns_the_papers_28_blocks():
    with torch.device("meta"):
        m = SparseDiTTransformer2DModel()
    where = lambda role: [i for i, r in enumerate(m.roles) if r == role]
    assert where("pool") == [0, 1] and where("gen") == [2, 8, 14, 20] and where("rec") == [6, 12, 18, 24]
    assert where("dense") == [7, 13, 19, 25] and where("top") == [26, 27]
    assert where("sparse") == [3, 4, 5, 9, 10, 11, 15, 16, 17, 21, 22, 23]
    kinds = {"pool": Poolingformer, "gen": GenerationBlock, "rec": RecoveryBlock}
    for role, block in zip(m.roles, m.transformer_blocks):
        assert type(block) is kinds.get(role, BasicTransformerBlock)
    assert not hasattr(m.transformer_blocks[0].attn1, "to_q") and hasattr(m.transformer_blocks[2].attn1, "to_q")


@pytest.mark.parametrize("kw, message", [
    (dict(num_layers=27),
     r"the layer plan has 28 blocks \(2 Poolingformers \+ 4 SDTMs × 6 \+ 2 top\) but num_layers is 27"),
    (dict(sdtm_layout=(2, 2, 1, 1)), "exactly one generation and one recovery block"),
    (dict(sdtm_layout=(1, 3, 1)), r"sdtm_layout is \[generation, sparse, recovery, dense\]"),
    (dict(num_poolingformers=-1, num_layers=25), "num_poolingformers must be an integer >= 0"),
    (dict(norm_type="ada_norm_single"), "norm_type 'ada_norm_zero'"),
    (dict(sparse_grid=17), "sparse_grid 17 exceeds the 16×16 token grid"),
    (dict(pruning_rates=(0.9, 0.5)), r"0 <= r_min <= r_max < 1, got \[0.9, 0.5\]"),
])
def test_bad_plans_are_refused_in_one_line(kw, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message) as err:
        SparseDiTTransformer2DModel(**kw)
    assert "\n" not in str(err.value)


# ---- blocks -------------------------------------------------------------------------------------------
def test_poolingformer_is_uniform_attention_computed_mean_first():
    """A DiT block whose Q and K projections are zero has all-equal logits: softmax gives uniform attention.
    The Poolingformer with that block's other weights must match it, and its attention branch must match the
    naive softmax(equal logits)·V form and be the same for every token."""
    kw = dict(num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate", norm_eps=1e-5,
              norm_elementwise_affine=False)
    with seeded(0):
        ref = BasicTransformerBlock(32, 2, 16, norm_type="ada_norm_zero", **kw).eval()
    with torch.no_grad():
        for p in (*ref.attn1.to_q.parameters(), *ref.attn1.to_k.parameters()):
            p.zero_()
    pool = Poolingformer(32, 2, 16, **kw).eval()
    state = {k: v for k, v in ref.state_dict().items() if ".to_q." not in k and ".to_k." not in k}
    pool.load_state_dict(state, strict=True)
    x = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([10, 10, 10]), torch.tensor([1, 2, 1000])
    with torch.no_grad():
        torch.testing.assert_close(pool(x, t, y), ref(x, timestep=t, class_labels=y), atol=1e-5, rtol=1e-5)
        h = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(3))
        v = pool.attn1.to_v(h).unflatten(-1, (2, 16)).transpose(1, 2)                    # (B, heads, N, d)
        naive = torch.softmax(torch.ones(64, 64), dim=-1) @ v
        naive = pool.attn1.to_out[0](naive.transpose(1, 2).flatten(2))
        fast = pool.attn1(h).expand(-1, 64, -1)
        torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
        assert torch.equal(fast, fast[:, :1].expand_as(fast)) and not torch.allclose(fast[0], fast[1])


def test_pooling_and_nearest_upsampling_by_hand():
    x = torch.arange(16.0).reshape(1, 16, 1)  # a 4×4 grid, one channel
    assert pool_tokens(x, (4, 4), 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    # 4 -> 3 does not divide: bins [0, 2), [1, 3), [2, 4) on each axis
    p3 = pool_tokens(x, (4, 4), 3).flatten().tolist()
    assert p3[0] == 2.5 and p3[2] == 4.5 and p3[4] == 7.5 and p3[8] == 12.5
    assert pool_tokens(x, (4, 4), 4).flatten().tolist() == x.flatten().tolist()
    assert pool_tokens(x, (4, 4), 1).flatten().tolist() == [7.5]
    s = torch.tensor([1.0, 2, 3, 4]).reshape(1, 4, 1)
    up = upsample_tokens(s, 2, (4, 4)).reshape(4, 4)
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    # 3 -> 4: source index floor(i·3/4) = 0, 0, 1, 2
    up = upsample_tokens(torch.arange(9.0).reshape(1, 9, 1), 3, (4, 4)).reshape(4, 4)
    assert up[:, 0].tolist() == [0, 0, 3, 6] and up[0].tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("g", [1, 3, 5, 7, 8])
def test_sdtm_token_counts_for_any_grid(g):
    """N = 64 -> M = g² in the sparse blocks -> N again after recovery, for g that do and do not divide 8."""
    model, _ = convert_dit(tiny_dit(6), num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0)
    seen = []
    for block in model.transformer_blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y, sparse_grid=g).sample
    assert seen == [64, g * g, g * g, g * g, 64, 64] and out.shape == (4, 8, 16, 16)
    with pytest.raises(ValueError, match="fixed sparse grid 9 exceeds the 8×8 token grid"):
        model(x, t, y, sparse_grid=9)


@pytest.mark.parametrize("g", [6, 7, 8, 10, 12])
def test_sdtm_token_counts_on_a_16x16_grid(g):
    """DiT-XL/2's 16×16 tokens at 256 px: N = 256 -> g² -> 256 for the paper's grids and one (7) that does not
    divide 16."""
    with seeded(0):
        dit = DiTTransformer2DModel(**{**TINY, "sample_size": 32}, num_layers=6).eval()
    model, _ = convert_dit(dit, num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0)
    seen = []
    for block in model.transformer_blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, torch.full((2,), 500), torch.tensor([3, 1000]), sparse_grid=g).sample
    assert seen == [256, g * g, g * g, g * g, 256, 256] and out.shape == (2, 8, 32, 32)


def test_initial_recovery_merge_is_its_dense_input_exactly():
    """Linear_1 = 0 and Linear_2 = I at conversion: X_merged = Linear_1(Up(X_s)) + Linear_2(X_in) is X_in, bit
    for bit (a product with the identity and a sum with zeros are exact in floating point)."""
    model, _ = convert_dit(tiny_dit(6), num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0)
    rec = model.transformer_blocks[4]
    assert isinstance(rec, RecoveryBlock)
    g = torch.Generator().manual_seed(3)
    x_in, xs = torch.randn(2, 64, 32, generator=g), torch.randn(2, 25, 32, generator=g)
    with torch.no_grad():
        merged = rec.linear_1(upsample_tokens(xs, 5, (8, 8)).contiguous()) + rec.linear_2(x_in)
    assert torch.equal(merged, x_in)


def test_batch_rows_do_not_mix():
    """Pooling, the Poolingformer's mean and attention stay within a sample: rows run alone give the same output."""
    model, _ = convert_dit(tiny_dit(6), num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0)
    with torch.no_grad():
        model.transformer_blocks[4].linear_1.weight.normal_(0, 0.1)  # let the sparse path reach the output
    x, t, y = inputs()
    with torch.no_grad():
        whole = model(x, t, y, sparse_grid=5).sample
        rows = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1], sparse_grid=5).sample for i in range(4)])
    torch.testing.assert_close(whole, rows, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole[0], whole[2])  # the null class row differs from the conditional one


# ---- conversion -------------------------------------------------------------------------------------
def test_conversion_maps_every_weight():
    dit = tiny_dit(6)
    model, report = convert_dit(dit, num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 1, 1, 1], num_top_blocks=1)
    assert model.roles == ("pool", "gen", "sparse", "rec", "dense", "top")
    assert report.ok and report.unmapped == [] and report.unset == []
    weights = ("weight", "bias")
    assert report.discarded == [f"transformer_blocks.0.attn1.{p}.{w}" for p in ("to_q", "to_k") for w in weights]
    assert report.new == [f"transformer_blocks.3.{p}.{w}" for p in ("linear_1", "linear_2") for w in weights]
    src, dst = dit.state_dict(), model.state_dict()
    for k in dst:
        if k not in report.new:
            assert torch.equal(dst[k], src[k]), k
    assert len(dst) == len(src) - 4 + 4
    rec = model.transformer_blocks[3]
    assert torch.equal(rec.linear_1.weight, torch.zeros(32, 32)) and torch.equal(rec.linear_2.weight, torch.eye(32))
    assert not rec.linear_1.bias.any() and not rec.linear_2.bias.any()
    # the per-block timestep/label embedders of diffusers' DiT are kept, block by block
    assert torch.equal(model.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight,
                       dit.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight)


def test_conversion_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="the layer plan has 6 blocks .* but num_layers is 4"):
        convert_dit(tiny_dit(4), num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 1, 1, 1], num_top_blocks=1)
    with pytest.raises(ValueError, match=r"takes only the plan settings .*\['num_layers'\]"):
        convert_dit(tiny_dit(4), num_layers=4)
    with pytest.raises(ValueError, match="converts a diffusers DiTTransformer2DModel, got Linear"):
        convert_dit(torch.nn.Linear(2, 2))
    plan = dict(num_poolingformers=0, num_sdtms=1, sdtm_layout=[1, 1, 1, 1], num_top_blocks=0)
    odd = tiny_dit(4)
    odd.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    _, report = convert_dit(odd, **plan)
    assert report.unmapped == ["extra"] and report.unset == [] and not report.ok
    with pytest.raises(ValueError, match=r"incomplete: unmapped DiT weights \['extra'\], unset SparseDiT weights \[\]"):
        SparseDiTTransformer2DModel.from_dit(odd, **plan)
    bad = tiny_dit(4)
    bad.proj_out_2 = torch.nn.Linear(32, 16)
    with pytest.raises(ValueError, match=r"shapes differ for proj_out_2.weight \(16, 32\) -> \(32, 32\)"):
        convert_dit(bad, **plan)


def test_full_grid_with_sparse_path_merged_equals_dit():
    """With g = the token grid, pooling and nearest upsampling are identities, so the generation block is the
    DiT block (queries and keys/values from the same tokens). Merging with linear_1 = I, linear_2 = 0 makes
    X_merged = X_s and the recovery block the DiT block too: without Poolingformers the model is DiT."""
    dit = tiny_dit(9)
    model = SparseDiTTransformer2DModel.from_dit(dit, num_poolingformers=0, num_sdtms=2, sdtm_layout=[1, 1, 1, 1],
                                                 num_top_blocks=1, sparse_grid=8)
    with torch.no_grad():
        for i in (2, 6):
            model.transformer_blocks[i].linear_1.weight.copy_(torch.eye(32))
            model.transformer_blocks[i].linear_2.weight.zero_()
    x, t, y = inputs()
    with torch.no_grad():
        want = dit(x, t, y).sample
        torch.testing.assert_close(model(x, t, y).sample, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x, t, y, sparse_grid=7).sample, want, atol=1e-3)


def test_converted_model_at_full_grid_follows_the_papers_equations():
    """The conversion's own merge (linear_1 = 0, linear_2 = I) gives X_merged = X_in, so even at g = grid the
    converted model is not DiT: the recovery block's residual stream is the SDTM's input, and the generation
    and sparse blocks reach it only through the recovery block's keys/values. Checked against that formula
    written from DiT's own blocks (generation and sparse = DiT blocks at g = grid)."""
    dit = tiny_dit(4)
    model = SparseDiTTransformer2DModel.from_dit(dit, num_poolingformers=0, num_sdtms=1, sdtm_layout=[1, 1, 1, 1],
                                                 num_top_blocks=0, sparse_grid=8)
    x, t, y = inputs()
    b = dit.transformer_blocks
    with torch.no_grad():
        x_in = dit.pos_embed(x)
        xs = b[1](b[0](x_in, timestep=t, class_labels=y), timestep=t, class_labels=y)
        s1, c1, g1, s2, c2, g2 = b[2].norm1.linear(F.silu(b[2].norm1.emb(t, y, hidden_dtype=x.dtype))).chunk(6, 1)
        mod = lambda h: b[2].norm1.norm(h) * (1 + c1[:, None]) + s1[:, None]
        h = x_in + g1[:, None] * b[2].attn1(mod(x_in), encoder_hidden_states=mod(xs))
        h = h + g2[:, None] * b[2].ff(b[2].norm3(h) * (1 + c2[:, None]) + s2[:, None])
        h = b[3](h, timestep=t, class_labels=y)
        swap = b[3].register_forward_hook(lambda mod_, args, out: h)  # DiT's own final layer on the reference tokens
        want = dit(x, t, y).sample
        swap.remove()
        got = model(x, t, y).sample
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, dit(x, t, y).sample, atol=1e-3)


@pytest.mark.parametrize("name, source, plan, labels, grids", [
    ("tiny_dit", "tiny", dict(num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 1, 1, 0], num_top_blocks=0),
     [3, 404], [16, 25]),
    ("proxy_dit", "proxy", dict(num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0),
     [0, 1], [81, 100]),
])
def test_converted_model_runs_in_dits_pipeline(name, source, plan, labels, grids):
    """DDIM, 2 steps: t = 500 then 0. r ∈ [0.61, 0.86]: r(500) = 0.6933, r(0) = 0.61. The tiny DiT's 8×8 grid:
    √(0.3067·64) = 4.43 -> 4, √(0.39·64) = 5.00 -> 5; the proxy's 16×16: √(0.3067·256) = 8.86 -> 9,
    √(0.39·256) = 9.99 -> 10."""
    from models import get_adapter

    adapter = get_adapter(name)
    pipe = adapter.build(source, scheduler="ddim")
    pipe.transformer = SparseDiTTransformer2DModel.from_dit(pipe.transformer, **plan).eval().requires_grad_(False)
    seen = []
    pipe.transformer.transformer_blocks[1].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[:2])))
    images = adapter.sample(pipe, labels, [1, 2], num_steps=2, guidance_scale=4.0)
    side = adapter.preset.resolution
    assert images.shape == (2, side, side, 3) and images.dtype == torch.uint8
    assert seen == [(4, m) for m in grids]  # CFG: 2 conditional + 2 null-class rows per call


def test_save_and_load_round_trip(tmp_path):
    model = SparseDiTTransformer2DModel.from_dit(tiny_dit(6), num_poolingformers=1, num_sdtms=1,
                                                 sdtm_layout=[1, 1, 1, 1], num_top_blocks=1, density_intervals=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    back = SparseDiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert back.roles == model.roles and back.density == model.density
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(back(x, t, y).sample, model(x, t, y).sample)


# ---- temporal density -------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, side, rates, near_data, at_noise", [
    (256, 16, (0.44, 0.61), 12, 10), (256, 16, (0.61, 0.86), 10, 6),
    (1024, 32, (0.61, 0.86), 20, 12), (1024, 32, (0.90, 0.96), 10, 6),
])
def test_grid_sizes_of_the_reported_ranges(tokens, side, rates, near_data, at_noise):
    d = TemporalDensity(*rates)
    assert d.grid(0, (side, side)) == d.grid(249, (side, side)) == near_data
    assert d.grid(999, (side, side)) == d.grid(1000, (side, side)) == at_noise


def test_rate_formula_by_hand():
    d = TemporalDensity(0.61, 0.86)
    assert d.rate(0) == d.rate(249.9) == 0.61
    assert d.rate(250) == pytest.approx(0.61) and d.rate(1000) == pytest.approx(0.86)
    assert d.rate(500) == pytest.approx((0.61 * 2000 + 0.86 * 1000) / 3000)   # 0.69333
    assert d.rate(700) == pytest.approx(0.61 + 0.25 * 1800 / 3000)
    rates = [d.rate(t) for t in range(0, 1001, 10)]
    assert rates == sorted(rates)
    assert sparse_side(0.5, 50, 10) == 5 and sparse_side(0.0, 256, 16) == 16 and sparse_side(0.999, 64, 8) == 1
    assert sparse_side(0.0, 400, 16) == 16  # clamped to the grid side
    assert sparse_side(0.0, 6.25, 4) == 3 and sparse_side(0.0, 2.25, 4) == 2  # halves round up (2.5 -> 3, 1.5 -> 2)


def test_piecewise_schedule_by_hand():
    """K = 4: midpoints 125, 375, 625, 875 -> r = 0.61, 0.61 + 0.25/6, 0.61 + 0.25/2, 0.61 + 0.25·5/6
    -> M = 99.8, 89.2, 67.8, 46.5 of 256 -> g = 10, 9, 8, 7."""
    d = TemporalDensity(0.61, 0.86, intervals=4)
    assert [d.grid(t, (16, 16)) for t in (0, 249, 250, 499, 500, 749, 750, 999)] == [10, 10, 9, 9, 8, 8, 7, 7]
    assert d.rate(300) == pytest.approx(0.61 + 0.25 / 6) and d.rate(999) == pytest.approx(0.61 + 0.25 * 5 / 6)
    three = TemporalDensity(0.61, 0.86, intervals=3)
    assert [three.bounds(k) for k in range(3)] == [(0, 334), (334, 667), (667, 1000)]
    assert three.interval(333) == 0 and three.interval(334) == 1 and three.interval(1000) == 2
    assert TemporalDensity(0.61, 0.86, intervals=1).grid(0, (16, 16)) == 9  # r(500)


def test_piecewise_sampling_shares_a_grid_and_keeps_t_uniform():
    d = TemporalDensity(0.61, 0.86, intervals=3)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        t = d.sample(8, gen)
        k = {d.interval(v) for v in t.tolist()}
        assert len(k) == 1 and t.dtype == torch.int64 and 0 <= t.min() and t.max() < 1000
        counts[k.pop()] += 1
    assert (counts / 3000 - torch.tensor([334, 333, 333]) / 1000).abs().max() < 0.03  # ∝ interval widths


@pytest.mark.parametrize("kw, message", [
    (dict(r_min=0.7, r_max=0.6), r"0 <= r_min <= r_max < 1, got \[0.7, 0.6\]"),
    (dict(r_min=0.5, r_max=1.0), r"0 <= r_min <= r_max < 1"),
    (dict(r_min=-0.1, r_max=0.5), r"0 <= r_min <= r_max < 1"),
    (dict(intervals=0), "density intervals must be an integer >= 1"),
    (dict(intervals=2.5), "density intervals must be an integer >= 1"),
    (dict(fixed_grid=0), "a fixed sparse grid must be an integer >= 1"),
    (dict(fixed_grid=4, intervals=4), "exclude each other"),
    (dict(num_timesteps=0), "num_timesteps must be an integer >= 1"),
])
def test_density_settings_are_validated_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        TemporalDensity(**kw)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"timestep 1001.0 is outside \[0, 1000\]"):
        TemporalDensity().rate(1001)


def test_forward_takes_g_from_the_timestep():
    model, _ = convert_dit(tiny_dit(4), num_poolingformers=0, num_sdtms=1, sdtm_layout=[1, 1, 1, 1], num_top_blocks=0)
    grid = (8, 8)
    assert model.sparse_grid_for(torch.tensor([0, 0]), grid) == 5
    assert model.sparse_grid_for(torch.tensor(999), grid) == 3
    assert model.sparse_grid_for(torch.tensor([0, 100, 249]), grid) == 5  # mixed t, one g: accepted
    with pytest.raises(ValueError, match=r"timesteps need different sparse grids \[3, 5\]"):
        model.sparse_grid_for(torch.tensor([0, 999]), grid)
    assert model.sparse_grid_for(torch.tensor([0, 999]), grid, sparse_grid=2) == 2
    with pytest.raises(ValueError, match="pass timestep or sparse_grid"):
        model.sparse_grid_for(None, grid)
    fixed = SparseDiTTransformer2DModel(**TINY, num_layers=4, num_poolingformers=0, num_sdtms=1,
                                        sdtm_layout=[1, 1, 1, 1], num_top_blocks=0, sparse_grid=6)
    assert fixed.sparse_grid_for(torch.tensor([0, 999]), grid) == 6
    x, _, y = inputs()
    with torch.no_grad():
        a = model(x, torch.tensor([999] * 4), y).sample
        b = model(x, torch.tensor([999] * 4), y, sparse_grid=3).sample
        c = model(x, torch.tensor([999] * 4), y, sparse_grid=5).sample
    assert torch.equal(a, b) and not torch.equal(a, c)
