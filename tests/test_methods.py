"""Every baseline through the one engine: compute-everything settings reproduce `none`, CFG halves share
tokens, hand-computed steps, and MACs predicted from the plan equal MACs counted while running."""
import copy

import numpy as np
import pytest
import torch

import methods.engine as engine_mod
from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.measure import count_macs, predict_macs
from methods import make_method
from methods.base import Layout
from methods.duca import duca_step_types
from methods.engine import Engine
from methods.forecast import SublayerState, reused, update_taylor
from methods.plan import Plan
from methods.rankings import Ranking, choose, spatial_bonus
from methods.schedules import interval_steps, periodic_steps, toca_full_steps, toca_period
from tests.util import tiny_config, with_dit

VARIANTS = {
    "fora": {"method": "fora", "interval": 2},
    "deepcache": {"method": "deepcache", "interval": 2},
    "taylorseer": {"method": "taylorseer", "interval": 2, "max_order": 2},
    "toca": {"method": "toca", "fresh_ratio": 0.3},
    "toca_quirk": {"method": "toca", "fresh_ratio": 0.3, "faithful_quirk": True},
    "toca_dit": {"method": "toca", "constants": "dit", "cfg_choice": "per_row", "fresh_ratio": 0.3, "bonus": 0.6,
                 "grid": 2},
    "toca_dit_shared": {"method": "toca", "constants": "dit", "fresh_ratio": 0.3, "bonus": 0.6, "grid": 2},
    "toca_vnorm": {"method": "toca", "score": "vnorm"},
    "toca_similarity": {"method": "toca", "score": "similarity"},
    "toca_random": {"method": "toca", "score": "random"},
    "toca_s1s2": {"method": "toca", "fresh_ratio": 0.3, "attention_terms": "both"},
    "toca_s1": {"method": "toca", "fresh_ratio": 0.3, "attention_terms": "self"},
    "duca": {"method": "duca"},
    "dicache": {"method": "dicache", "threshold": 3.0},
    # each method's own "compute everything" setting
    "fora_all": {"method": "fora", "interval": 1},
    "deepcache_all": {"method": "deepcache", "interval": 1},
    "taylorseer_all": {"method": "taylorseer", "interval": 1},
    "toca_all": {"method": "toca", "threshold": 1},
    "duca_all": {"method": "duca", "threshold": 1},
    "dicache_all": {"method": "dicache", "threshold": 0.0},
}
MODELS = ("tiny_pixart", "tiny_dit")


@pytest.fixture(scope="module")
def cfg():
    c = with_dit(tiny_config())
    c = copy.deepcopy(c)
    c["methods"].update(VARIANTS)
    base = list(c["models"]["tiny_pixart"]["methods"])
    for m in MODELS:
        c["models"][m]["methods"] = base + [v for v in VARIANTS if v not in base]
    return config_mod.validate(c)


@pytest.fixture(scope="module")
def pipes(cfg):
    return {m: Cell(cfg, m, "none").build_pipeline() for m in MODELS}


def conds(model):
    return ["A cat on a mat.", "Two red buses."] if model == "tiny_pixart" else [3, 404]


def run(cfg, pipes, model, variant, conditions=None, seeds=(21, 22)):
    cell = Cell(cfg, model, variant)
    with cell.accelerated(pipes[model]) as engine:
        return cell.sample(pipes[model], engine, conditions or conds(model), list(seeds)).numpy()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["fora_all", "deepcache_all", "taylorseer_all", "toca_all", "duca_all",
                                     "dicache_all"])
def test_compute_everything_reproduces_none(cfg, pipes, model, variant):
    if variant.startswith("dicache"):  # DiCache samples one image at a time: compare like with like
        ref = np.concatenate([run(cfg, pipes, model, "none", [c], [s]) for c, s in zip(conds(model), [21, 22])])
    else:
        ref = run(cfg, pipes, model, "none")
    np.testing.assert_array_equal(run(cfg, pipes, model, variant), ref)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["fora", "deepcache", "taylorseer", "toca", "duca", "toca_vnorm",
                                     "toca_similarity", "toca_random", "dicache"])
def test_accelerated_runs_differ_but_stay_sane(cfg, pipes, model, variant):
    out, ref = run(cfg, pipes, model, variant), run(cfg, pipes, model, "none")
    assert out.shape == ref.shape and not np.array_equal(out, ref)
    np.testing.assert_array_equal(out, run(cfg, pipes, model, variant))  # deterministic, no leaked state


def test_attention_terms_on_real_runs(cfg, pipes):
    """Table 10's scores pick other tokens on PixArt; on DiT, ToCa's own score already is s1, and s2 (no
    cross-attention there) is refused."""
    auto, both, s1 = (run(cfg, pipes, "tiny_pixart", v) for v in ("toca", "toca_s1s2", "toca_s1"))
    assert not np.array_equal(auto, both) and not np.array_equal(both, s1) and not np.array_equal(auto, s1)
    np.testing.assert_array_equal(run(cfg, pipes, "tiny_dit", "toca_s1"), run(cfg, pipes, "tiny_dit", "toca"))
    with pytest.raises(ValueError, match="attention_terms 'both' needs self_attn and cross_attn"):
        run(cfg, pipes, "tiny_dit", "toca_s1s2")


def _chosen_sets(cfg, pipes, model, variant, monkeypatch):
    chosen = []
    real = engine_mod.choose
    monkeypatch.setattr(engine_mod, "choose",
                        lambda s, k, h, c: chosen.append((real(s, k, h, c), h)) or chosen[-1][0])
    run(cfg, pipes, model, variant)
    assert chosen, "no partial step ran"
    for idx, halves in chosen:
        assert halves == 2
        assert idx.shape[1] == len(set(idx[0].tolist()))  # k distinct tokens
    n = chosen[0][0].shape[0] // 2
    return [(set(r.tolist()) for r in (idx[:n].flatten(), idx[n:].flatten())) for idx, _ in chosen]


@pytest.mark.parametrize("model,variant", [("tiny_pixart", "toca"), ("tiny_pixart", "duca"),
                                           ("tiny_dit", "toca_dit_shared")])
def test_shared_cfg_choice_gives_both_halves_one_token_set(cfg, pipes, model, variant, monkeypatch):
    """The official PixArt code (and the `shared` setting anywhere): cond and uncond rows of a sample
    compute the same tokens."""
    for cond, uncond in _chosen_sets(cfg, pipes, model, variant, monkeypatch):
        assert cond == uncond


def test_per_row_cfg_choice_on_dit_lets_the_halves_differ(cfg, pipes, monkeypatch):
    """The official DiT code ranks each row on its own: under toca_dit's settings the cond and uncond rows
    of one sample choose different token sets (on at least one partial call)."""
    pairs = list(_chosen_sets(cfg, pipes, "tiny_dit", "toca_dit", monkeypatch))
    assert any(cond != uncond for cond, uncond in pairs)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.1, 0.8, 0.3, 0.6]])   # rows: cond, uncond of one sample
    assert choose(scores, 2, 2, "per_row").tolist() == [[0, 2], [1, 3]]
    assert choose(scores, 2, 2, "shared").tolist() == [[0, 1], [0, 1]]   # means 0.5, 0.45, 0.4, 0.3
    with pytest.raises(ValueError, match="toca.cfg_choice must be one of"):
        make_method("toca", cfg_choice="cond")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["none", "fora", "deepcache", "taylorseer", "toca", "toca_quirk",
                                     "toca_dit", "duca"])
def test_macs_predicted_from_the_plan_equal_macs_counted(cfg, model, variant):
    cell = Cell(cfg, model, variant)
    counted = count_macs(cell, "meta")["macs_c1"]
    assert predict_macs(cell) == pytest.approx(counted, rel=1e-9)
    assert counted == pytest.approx(count_macs(cell, "cpu")["macs_c1"], rel=1e-9)


# ---- hand-computed steps ---------------------------------------------------------------------------

def test_toca_flux_ratio_applies_the_stream_factor_before_the_clamp():
    """The official FLUX code: R·(1.5 − l/27)·stream factor, then clamped. R = 0.9, layer 0, dual stream
    (0.4): 0.9·1.5·0.4 = 0.54 (clamping first would give 0.4); single stream (1.6): 2.16 -> 1; attention 0."""
    from methods.schedules import toca_fresh_ratio

    assert toca_fresh_ratio(0.9, 1, 0, 19, "mlp", 4, "flux", "up", 0.4) == pytest.approx(0.54)
    assert toca_fresh_ratio(0.9, 1, 0, 38, "mlp", 4, "flux", "up", 1.6) == 1.0
    assert toca_fresh_ratio(0.1, 1, 27, 38, "mlp", 4, "flux", "up", 1.6) == pytest.approx(0.1 * 0.5 * 1.6)
    assert toca_fresh_ratio(0.9, 1, 0, 19, "self_attn", 4, "flux", "up", 0.4) == 0.0


def test_schedules_match_the_spec():
    assert sorted(toca_full_steps(3, 20, "pixart", "up")) == [0, 4, 6, 9, 12, 15, 18]
    assert toca_full_steps(3, 20, "pixart", "up", quirk=True)[4] == "first"
    dit = toca_full_steps(3, 50, "dit", "down", quirk=True)
    assert sorted((49 - s for s, v in dit.items() if v == "all"), reverse=True) == \
        [49, 44, 40, 36, 30, 27, 24, 21, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0]
    assert {49 - s for s, v in dit.items() if v == "first"} == {45, 32}
    assert interval_steps(20, 2, warmup=2) == [0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19]  # TaylorSeer: 11 full
    # TaylorSeer's DiT grid (interval 4, first_enhance 2) in DiT's countdown: 49, 48, 44, ..., 0.
    assert [49 - s for s in interval_steps(50, 4, warmup=2)] == [49, 48] + list(range(44, -1, -4))
    types = duca_step_types(3, 20, "pixart", "up")
    assert [s for s, t in enumerate(types) if t == "full"] == [0, 3, 6, 9, 12, 15, 18]
    assert [s for s, t in enumerate(types) if t == "aggressive"] == [2, 5, 8, 11, 14, 17]


def test_fora_tests_the_samplers_clock():
    """Official FORA on DiT: full at the first step (countdown index S − 1) and wherever index mod N == 0.
    DDIM-50, N = 3: countdown indices 49, 48, 45, ..., 0, i.e. sampling steps 0, 1, 4, ..., 49 (18 steps).
    PixArt's DPM-Solver counts up: s mod N == 0 (0, 2, ..., 18 for N = 2)."""
    dit = periodic_steps(50, 3, "down")
    assert dit == [0] + list(range(1, 50, 3)) and len(dit) == 18
    assert [49 - s for s in dit] == [49] + list(range(48, -1, -3))
    assert periodic_steps(20, 2, "up") == list(range(0, 20, 2))
    down = Layout(4, ("attn1", "ff"), ("self_attn", "mlp"), clock="down")
    plan = make_method("fora", interval=3).plan(50, down)
    assert (plan.ratios[:, 0, 0] == 1).nonzero().flatten().tolist() == dit
    # DeepCache and TaylorSeer count in sampling order whatever the clock (their official rules).
    for name, kw in (("deepcache", {}), ("taylorseer", {"first_enhance": 2})):
        up = make_method(name, interval=3, **kw).plan(50, Layout(4, ("attn1", "ff"), ("self_attn", "mlp")))
        same = make_method(name, interval=3, **kw).plan(50, down)
        assert torch.equal(up.ratios, same.ratios) and (up.skip is None or torch.equal(up.skip, same.skip))


def test_toca_sensitive_window_is_the_official_range():
    """DiT's T = 2 window is c in range(int(0.2 S), int(0.4 S)): c in 10..19 at S = 50, {2, 3} at S = 12
    (not 0.2 S <= c < 0.4 S, which is {3, 4} there)."""
    def window(S):
        return {S - 1 - s for s in range(S) if toca_period(9, s, S, "dit", "down") == 2}
    assert window(50) == set(range(10, 20))
    assert window(12) == {2, 3}
    # S = 12, N = 3 by hand: c = 11 full (first step; T = round(3 / (2/3)) = round(4.5) = 4, half to even);
    # c = 8 full (8 mod 4 = 0; T = round(3 / 0.8667) = 3); c = 6 full (T = round(3 / 1.0) = 3); c = 3 full
    # (window: T = 2); c = 2 full (T = 2); c = 0 full.
    full = toca_full_steps(3, 12, "dit", "down")
    assert sorted((11 - s for s in full), reverse=True) == [11, 8, 6, 3, 2, 0]


def test_random_scores_are_a_function_of_the_sample():
    """score: random draws one row per sample from its key (seed), repeated for its CFG rows: a sample's
    scores do not depend on the batch it lands in or on its position there."""
    r = Ranking(score="random")
    kw = dict(where=(0, 1), stream="image", key="3:1:ff", step=3, last_input=None, grid=(2, 2))

    def scores(keys):
        r.sample_keys = keys
        B = 2 * len(keys)
        return r.scores(tokens=torch.zeros(B, 4, 8), staleness=torch.zeros(B, 4), cfg_halves=2, **kw)

    alone, batch = scores([7]), scores([5, 7, 9])
    assert torch.equal(alone[0], batch[1]) and torch.equal(alone[1], batch[4])   # cond and uncond rows of 7
    assert torch.equal(batch[:3], batch[3:]) and not torch.equal(batch[0], batch[1])


def test_random_ranking_images_do_not_depend_on_the_batch(cfg, pipes):
    prompts, seeds = ["A cat on a mat.", "Two red buses.", "A green tree."], [21, 22, 23]
    together = run(cfg, pipes, "tiny_pixart", "toca_random", prompts, seeds)
    for i in range(3):
        np.testing.assert_array_equal(run(cfg, pipes, "tiny_pixart", "toca_random", [prompts[i]], [seeds[i]]),
                                      together[i:i + 1])


def test_staleness_ages_when_a_partial_sub_layer_computes_no_token(cfg, pipes):
    """Official ToCa ages every counter on a partial call even when k = int(r·N) = 0. Plan: step 0 full,
    step 1 ff at ratio 0 (k = 0), steps 2 and 3 ff at 0.5: the counters the ranking sees are all 1 at
    step 2 and then 2 (not chosen at step 2) or 0 (chosen)."""
    cell = Cell(cfg, "tiny_pixart", "none")
    pipe = pipes["tiny_pixart"]
    layout = cell.adapter.layout(pipe)
    ratios = torch.ones(4, layout.blocks, len(layout.sublayers))
    ratios[1, :, layout.index("mlp")] = 0.0
    ratios[2:, :, layout.index("mlp")] = 0.5
    ranking, seen = Ranking(score="norm"), []
    real = ranking.scores
    ranking.scores = lambda **kw: (seen.append((kw["step"], kw["where"][1], kw["staleness"].clone())), real(**kw))[1]
    with Engine(cell.adapter, pipe, Plan(ratios, layout.sublayers), ranking, cfg_halves=2):
        cell.adapter.sample(pipe, ["A cat on a mat."], [1], num_steps=4, guidance_scale=4.5)
    at2 = [st for step, b, st in seen if step == 2]
    at3 = [st for step, b, st in seen if step == 3]
    assert at2 and all((st == 1).all() for st in at2)
    n = at3[0].shape[1]
    for st in at3:
        assert sorted(set(st.flatten().tolist())) == [0, 2] and int((st[0] == 0).sum()) == n // 2


def test_toca_chooses_the_hand_computed_tokens():
    """Cross-attention entropy + staleness on a 4-token, 2-text-token toy, batch [uncond, cond]."""
    r = Ranking(score="attention", staleness_weight=0.25, staleness_norm=3)
    # Queries/keys with one head of width 1: token i attends with logits q_i * k_j.
    q = torch.tensor([[[0.0], [5.0], [0.0], [1.0]]]).repeat(2, 1, 1)
    k = torch.tensor([[[1.0], [-1.0]]]).repeat(2, 1, 1)
    r.observe((0, 0), "cross_attn", q, k, None, None, heads=1, idx=None, segments={"image": (0, 4)})
    # Tokens 0 and 2 attend uniformly (max entropy), token 1 almost one-hot, token 3 in between.
    scores = r.scores(where=(0, 0), stream="image", key="1:0:ff", step=1, tokens=torch.zeros(2, 4, 8), last_input=None,
                      staleness=torch.tensor([[0, 0, 3, 0]] * 2), grid=(2, 2))
    idx = choose(scores, 2, cfg_halves=2)
    assert idx[0].tolist() == [2, 0] and torch.equal(idx[0], idx[1])  # stale token 2 first, then 0
    with pytest.raises(ValueError, match="unknown token score"):
        Ranking(score="nosuch")


def test_attention_terms_add_self_influence_and_cross_entropy():
    """Table 10's ablation: `both` scores s1 + s2; `self` / `cross` keep one; `auto` is ToCa's s2."""
    q = torch.tensor([[[0.0], [5.0], [0.0], [1.0]]])
    k_text = torch.tensor([[[1.0], [-1.0]]])
    rankings = {t: Ranking(score="attention", attention_terms=t) for t in ("auto", "self", "cross", "both")}
    for r in rankings.values():
        r.check_model({"self_attn", "cross_attn", "mlp"})
        for kind in ("self_attn", "cross_attn"):
            if r.wants(kind)[0]:
                r.observe((0, 0), kind, q, q if kind == "self_attn" else k_text, None, None, heads=1, idx=None,
                          segments={"image": (0, 4)})
    kw = dict(where=(0, 0), stream="image", key="1:0:ff", step=1, tokens=torch.zeros(1, 4, 8), last_input=None,
              staleness=torch.zeros(1, 4), grid=(2, 2))
    s = {t: r.scores(**kw) for t, r in rankings.items()}
    torch.testing.assert_close(s["both"], s["self"] + s["cross"])
    torch.testing.assert_close(s["auto"], s["cross"])
    assert not torch.allclose(s["self"], s["cross"])
    assert rankings["auto"].wants("self_attn") == (False, False)  # ToCa's PixArt score captures no self-attn
    dit = Ranking(score="attention", attention_terms="cross")
    with pytest.raises(ValueError, match="attention_terms 'cross' needs cross_attn sub-layers; this model has "
                                         "mlp, self_attn"):
        dit.check_model({"self_attn", "mlp"})
    with pytest.raises(ValueError, match="toca.attention_terms must be one of"):
        make_method("toca", attention_terms="s1")


def test_spatial_bonus_raises_each_cells_best_token():
    s = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.5, 0.4, 0.8, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]])
    out = spatial_bonus(s, (4, 4), 2, 0.5)
    expect = s.clone()
    for i in (1, 6, 8, 15):  # the maxima of the four 2×2 cells (ties: the first)
        expect[0, i] *= 1.5
    torch.testing.assert_close(out, expect)
    # A joint [text; image] sequence: the 3 text tokens keep their scores, the grid is the last 16 tokens.
    text = torch.tensor([[0.7, 0.2, 0.9]])
    torch.testing.assert_close(spatial_bonus(torch.cat([text, s], 1), (4, 4), 2, 0.5), torch.cat([text, expect], 1))
    with pytest.raises(ValueError, match="the spatial bonus's grid 3 does not divide the 4×4 token grid"):
        spatial_bonus(s, (4, 4), 3, 0.5)


def test_a_spatial_bonus_that_cannot_tile_the_grid_is_refused_before_sampling(cfg, pipes):
    cell = Cell(cfg, "tiny_pixart", "none")
    pipe = pipes["tiny_pixart"]   # 8×8 image tokens
    plan = make_method("toca", grid=3).plan(cell.num_steps, cell.adapter.layout(pipe))
    with pytest.raises(ValueError, match="grid 3 does not divide the 8×8 token grid"):
        Engine(cell.adapter, pipe, plan, Ranking(bonus=0.4, grid=3))


def test_taylorseer_forecast_of_a_quadratic():
    """f(s) = s² observed at full steps 0, 1, 3; forecast at step 4 with order 2 (divided differences)."""
    state = SublayerState()
    for s in (0, 1, 3):
        update_taylor(state, torch.tensor([float(s * s)]), s, order=2, from_step=1)
    # Δ1 = (9 - 1) / 2 = 4, Δ2 = (4 - 1) / 2 = 1.5; f̂(4) = 9 + 4·1 + 1.5·1²/2
    assert reused(state, 4, order=2).item() == pytest.approx(9 + 4 + 0.75)


def test_deepcache_adds_the_telescoped_deep_residual(cfg, pipes):
    """On a cached step the output of the last block equals block 0's fresh output + (out_L − out_0) of
    the last full step."""
    cell = Cell(cfg, "tiny_pixart", "deepcache")
    pipe = pipes["tiny_pixart"]
    blocks = cell.adapter.blocks(pipe)
    outs = []
    h0 = blocks[0].register_forward_hook(lambda m, a, o: outs.append(("first", o.clone())))
    hl = blocks[-1].register_forward_hook(lambda m, a, o: outs.append(("last", o.clone())))
    try:
        with cell.accelerated(pipe) as engine:
            cell.sample(pipe, engine, conds("tiny_pixart")[:1], [1])
    finally:
        h0.remove(), hl.remove()
    (_, f0), (_, l0), (_, f1), (_, l1) = outs[:4]  # step 0 (full), step 1 (cached)
    torch.testing.assert_close(l1, f1 + (l0 - f0), rtol=1e-5, atol=1e-5)


def test_method_settings_are_validated():
    with pytest.raises(ValueError, match=r"toca.fresh_ratio must be in \[0, 1\]"):
        make_method("toca", fresh_ratio=1.5)
    with pytest.raises(ValueError, match="fora.interval must be an integer"):
        make_method("fora", interval=0)
    with pytest.raises(ValueError, match="duca.constants must be one of"):
        make_method("duca", constants="sd3")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['schedule'\]"):
        make_method("toca", schedule="dit")
    lay = Layout(4, ("attn1", "ff"), ("self_attn", "mlp"))
    with pytest.raises(ValueError, match="shallow_blocks must be < 4"):
        make_method("deepcache", shallow_blocks=4).plan(10, lay)
    plan = make_method("toca").plan(20, Layout(28, ("attn1", "attn2", "ff"), ("self_attn", "cross_attn", "mlp")))
    partial = [s for s in range(20) if s not in toca_full_steps(3, 20, "pixart", "up")]
    assert (plan.ratios[partial, :, 0] == 0).all()  # self-attention is never partially recomputed
    assert (plan.ratios[[0, 4, 6]] == 1).all()
    assert plan.ratios[5, 0, 2] > plan.ratios[5, 27, 2] > 0  # deeper layers refresh fewer tokens


def test_dicache_skip_decision_and_trajectory_alignment():
    """Three blocks adding constants; retention {0, 1, 4}; threshold 0.5 on the probe's relative change."""
    from methods.dicache import DiCache

    method = DiCache(threshold=0.5, ret_ratio=0.2)
    ctl = method.controller(5, 3)
    assert ctl.retained == {0, 1, 4}
    adds = {0: 1.0, 1: 2.0, 2: 3.0}

    def run(step, x):
        for b in range(3):
            x = ctl.run_block(step, b, lambda x=x, b=b: x + adds[b], x)
        return x

    assert run(0, torch.tensor([1.0])).item() == 7.0 and run(1, torch.tensor([2.0])).item() == 8.0
    # Step 2: probe output 3.2 vs 3.0 before: change 0.067 < 0.5 -> skip, align with the probe residuals.
    out = run(2, torch.tensor([2.2]))
    assert ctl.skipping and ctl.full_steps == 2
    # r1 = r2 = 6 (both full steps added 1+2+3), so the aligned residual is 6 whatever γ is.
    assert out.item() == pytest.approx(8.2)
    # Step 3: probe 11.0 vs 3.2: accumulated change > 0.5 -> compute, and the accumulator resets.
    assert run(3, torch.tensor([10.0])).item() == 16.0 and not ctl.skipping and ctl.acc == 0.0
    ctl.finish()
    assert ctl.runs == [3]


def test_dicache_counts_real_runs_per_sample(cfg):
    cell = Cell(cfg, "tiny_pixart", "dicache")
    r = count_macs(cell, "auto")
    full = count_macs(Cell(cfg, "tiny_pixart", "none"), "meta")
    assert r["device"] == "cpu" and r["images"] == 8 and len(r["full_steps"]) == 8
    assert 3 <= r["full_steps_mean"] < cell.num_steps
    assert r["macs_c1"] < full["macs_c1"]
    forced = count_macs(cell, "meta")  # the spec's forced pattern on the meta device
    assert forced["denoiser_calls"] == cell.num_steps


def test_accelerate_a_plain_diffusers_pipeline():
    from methods import accelerate
    from models import get_adapter

    pipe = get_adapter("tiny_pixart").build("tiny", scheduler="dpm_solver_pp")

    def call(steps=6):
        gen = torch.Generator().manual_seed(0)
        return pipe(prompt="A red bus.", negative_prompt="", num_inference_steps=steps, generator=gen,
                    height=32, width=32, use_resolution_binning=False, clean_caption=False,
                    max_sequence_length=80, output_type="np").images

    plain = call()
    handle = accelerate(pipe, "toca", fresh_ratio=0.3, grid=2)
    first, second = call(), call()
    np.testing.assert_array_equal(first, second)  # state resets between calls
    assert not np.array_equal(first, plain)
    assert call(steps=8).shape == plain.shape     # a run of another length gets its own plan
    handle.detach()
    np.testing.assert_array_equal(call(), plain)
    with pytest.raises(ValueError, match="num_inference_steps"):
        accelerate(pipe, "steps", ratio=0.5)
    with pytest.raises(ValueError, match="registered methods"):
        accelerate(pipe, "nosuch")


def test_partial_self_attention_takes_keys_and_values_from_every_token(cfg, pipes):
    """A plan computing half of the tokens of attn1: queries from k tokens, keys/values from all N."""
    cell = Cell(cfg, "tiny_dit", "none")
    pipe = pipes["tiny_dit"]
    layout = cell.adapter.layout(pipe)
    ratios = torch.ones(cell.num_steps, layout.blocks, len(layout.sublayers))
    ratios[1:, :, layout.index("self_attn")] = 0.5
    attn1 = cell.adapter.blocks(pipe)[0].attn1
    calls = []
    seen = attn1.to_q.register_forward_hook(lambda m, a, o: calls.append(("q", a[0].shape)))
    seen_k = attn1.to_k.register_forward_hook(lambda m, a, o: calls.append(("k", a[0].shape)))
    try:
        with Engine(cell.adapter, pipe, Plan(ratios, layout.sublayers), Ranking(score="norm"), cfg_halves=2):
            out = cell.adapter.sample(pipe, [3], [1], num_steps=cell.num_steps, guidance_scale=1.5)
    finally:
        seen.remove(), seen_k.remove()
    n = cell.adapter.token_grid()[0] * cell.adapter.token_grid()[1]
    assert calls[0] == ("q", torch.Size([2, n, 32])) and calls[1] == ("k", torch.Size([2, n, 32]))
    assert calls[2] == ("q", torch.Size([2, n // 2, 32])) and calls[3] == ("k", torch.Size([2, n, 32]))
    assert out.shape == (1, 32, 32, 3)
