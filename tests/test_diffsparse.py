"""DiffSparse: schedule files, the gated training path, the straight-through gradient, two-stage training
with resume, the MAC budget, the search baselines on a model, and schedule transfer across resolutions."""
import copy
import json

import numpy as np
import pytest
import torch

from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.measure import count_macs, predict_macs
from methods import make_method
from methods.base import Layout
from methods.diffsparse import dp
from methods.diffsparse.relax import CostPredictor, straight_through
from methods.diffsparse.schedule import Schedule, candidates
from methods.diffsparse.train import Trainer, make_loss, token_mac_weights
from methods.engine import Engine
from tests.util import REPO, tiny_config, with_dit, with_flux, with_wan

CONDS = {"tiny_pixart": ["A cat on a mat.", "Two red buses.", "A bowl of fruit.", "A dog."],
         "tiny_dit": [1, 207, 999, 5],
         "tiny_wan": ["a red cube turning", "a dog running", "waves on a beach", "a city at night"],
         "tiny_flux": ["a red cube on a table", "a dog on grass", "a bowl of fruit", "a city at night"]}


@pytest.fixture(scope="module", params=["tiny_pixart", "tiny_dit", "tiny_wan", "tiny_flux"])
def model_pipe(request):
    cell = Cell(with_flux(with_wan(with_dit(tiny_config()))), request.param, "none")
    return cell, cell.build_pipeline()


def trainer(cell, pipe, loss="l2", **train):
    m = make_method("diffsparse", ratio=0.43, toca={"grid": 2},
                    train={"samples": 4, "batch_size": 2, "loss": loss, "lr_layer": 0.1, "save_every": 1, **train})
    return Trainer(cell.adapter, pipe, m, conditions=CONDS[cell.model], num_steps=cell.num_steps,
                   guidance_scale=cell.model_cfg["guidance_scale"], meta={"model": cell.model})


def random_schedule(steps=5, blocks=4, subs=("attn1", "attn2", "ff"), seed=0) -> Schedule:
    g = torch.Generator().manual_seed(seed)
    return Schedule(torch.randint(0, 5, (steps - 1, blocks, len(subs)), generator=g), 0.25, subs)


# ---- the schedule file ----------------------------------------------------------------------------
def test_schedule_round_trip_and_plan(tmp_path):
    s = random_schedule()
    s.meta = {"ratio": 0.43, "model": "x"}
    path = tmp_path / "s.safetensors"
    s.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]   # no temporary left
    back = Schedule.load(path)
    assert torch.equal(back.units, s.units) and back.sublayers == s.sublayers and back.meta["ratio"] == 0.43
    plan = back.plan()
    assert plan.steps == 5 and (plan.ratios[0] == 1).all()
    assert torch.allclose(plan.ratios[1:], 1 - 0.25 * s.units.float())
    assert json.loads((tmp_path / "s.json").read_text())["mean_sparsity"] == pytest.approx(s.mean_sparsity())


def test_schedule_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it first"):
        Schedule.load(tmp_path / "missing.safetensors")
    random_schedule().save(tmp_path / "s.safetensors")
    (tmp_path / "s.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt schedule"):
        Schedule.load(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match=r"trained for T=5 steps .* this run has T=8"):
        random_schedule().check_fits(8, Layout(4, ("attn1", "attn2", "ff"), ("self_attn", "cross_attn", "mlp")))
    with pytest.raises(ValueError, match="units must lie in"):
        Schedule(torch.full((2, 1, 1), 5), 0.25, ("ff",))
    with pytest.raises(ValueError, match="must divide 1"):
        candidates(0.3)
    assert candidates(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_method_settings_are_checked_and_a_schedule_must_match_its_variant(tmp_path):
    with pytest.raises(ValueError, match=r"diffsparse.train: unknown setting\(s\) \['lr'\]"):
        make_method("diffsparse", train={"lr": 1})
    with pytest.raises(ValueError, match="budget must be one of"):
        make_method("diffsparse", budget="flops")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        make_method("diffsparse", ratio=1.4)
    with pytest.raises(ValueError, match="search.algorithm"):
        make_method("diffsparse", search={"algorithm": "anneal"})
    s = random_schedule()
    s.meta = {"ratio": 0.54, "budget": "items"}
    s.save(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="trained for ratio 0.54"):
        make_method("diffsparse", ratio=0.43, schedule=str(tmp_path / "s.safetensors")).load_schedule()


def test_losses_vanish_on_identical_images_only():
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    for name in ("l2", "ssim"):
        f = make_loss(name, None)
        assert f(a, a).abs().max() < 1e-5 and (f(a, b) > 1e-3).all() and f(a, b).shape == (2,)
    with pytest.raises(ValueError, match="needs an LPIPS network"):
        make_loss("lpips", None)


# ---- the gated training path ----------------------------------------------------------------------
def test_gated_forward_equals_inference_under_the_hard_plan(model_pipe):
    """The straight-through forward pass is exactly the inference computation of the DP's choice."""
    cell, pipe = model_pipe
    tr = trainer(cell, pipe)
    cost = torch.randn(tr.predictor.items, 5, generator=torch.Generator().manual_seed(1))
    units = torch.from_numpy(dp.solve(cost.numpy(), tr.budget)).view(tr.predictor.shape)
    gates = straight_through(units.view(-1), cost, 1.0).view(*tr.predictor.shape, 5)
    conds, seeds = CONDS[cell.model][:2], [3, 4]
    g = cell.model_cfg["guidance_scale"]
    with tr.engine:
        tr.relax(gates.detach(), checkpoint=False)
        tr.engine.reset()
        with torch.no_grad():
            gated = cell.adapter.sample_float(pipe, conds, seeds, num_steps=cell.num_steps, guidance_scale=g)
        tr.engine.relax(None)
    plan = tr._schedule(units).plan()
    with Engine(cell.adapter, pipe, plan, tr.method.ranking(), **cell.adapter.engine_cfg(g)), torch.no_grad():
        hard = cell.adapter.sample_float(pipe, conds, seeds, num_steps=cell.num_steps, guidance_scale=g)
    with torch.no_grad():
        full = cell.adapter.sample_float(pipe, conds, seeds, num_steps=cell.num_steps, guidance_scale=g)
    assert torch.allclose(gated, hard, atol=1e-5)
    assert (hard - full).abs().max() > 1e-3          # the plan did reuse: the check is not vacuous


def test_checkpointed_and_plain_gradients_agree(model_pipe):
    cell, pipe = model_pipe
    grads = []
    for ckpt in (False, True):
        tr = trainer(cell, pipe, checkpoint=ckpt)
        tr.initialise()
        with tr.engine:
            loss, _ = tr.loss(CONDS[cell.model][:2], [5, 6], stage=2)
            loss.backward()
        grads.append(tr.predictor.layer_cost.grad.clone())
        if ckpt:
            with tr.engine:
                loss, _ = tr.loss(CONDS[cell.model][:2], [5, 6], stage=2)
            with pytest.raises(RuntimeError, match="while the engine is attached"):
                loss.backward()
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-4)


def test_ste_gradient_has_the_sign_of_the_finite_difference(model_pipe):
    """Gradient check on a toy model: for the items whose STE gradient on C is strongest, switching the
    item from its chosen candidate u to u' changes the loss with the sign the gradient predicts:
    ∂L/∂C[i,u'] > ∂L/∂C[i,u] ⇔ u' lowers the loss (so gradient descent makes u' cheaper than u)."""
    cell, pipe = model_pipe
    if cell.model == "tiny_wan":  # measured: a 1 % gate change moves its loss 10⁴× more than the gradient
        # predicts and a 0.1 % change not at all, i.e. the token choice of its 48 near-tied tokens flips
        pytest.skip("tiny_wan's loss jumps with the token choice, which the STE does not model")
    tr = trainer(cell, pipe)
    g = cell.model_cfg["guidance_scale"]
    conds, seeds = CONDS[cell.model][:2], [7, 8]
    units = torch.randint(0, 5, tr.predictor.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        teacher = cell.adapter.sample_float(pipe, conds, seeds, num_steps=cell.num_steps, guidance_scale=g)

    def loss_of(u, cost=None):
        with tr.engine:
            if cost is not None:
                tr.relax(straight_through(u.view(-1), cost, 1.0).view(*tr.predictor.shape, 5), False)
            else:
                tr.relax(torch.nn.functional.one_hot(u, 5).float(), False)
            tr.engine.reset()
            with torch.set_grad_enabled(cost is not None):
                student = cell.adapter.sample_float(pipe, conds, seeds, num_steps=cell.num_steps,
                                                    guidance_scale=g, grad=cost is not None)
            tr.engine.relax(None)
        return tr.loss_fn(teacher * 2 - 1, student * 2 - 1).mean()

    cost = torch.zeros(tr.predictor.items, 5, requires_grad=True)   # uniform p: a clean read-out
    base = loss_of(units, cost)
    base.backward()
    grad = cost.grad
    flat = units.view(-1)
    rows = torch.arange(len(flat))
    # Per item: the alternative the gradient is most sure about, and how sure.
    diff = grad - grad[rows, flat].unsqueeze(1)                      # > 0: moving to u' predicted to help
    diff[rows, flat] = 0
    alt = diff.abs().argmax(1)
    strength = diff.abs().max(1).values
    checked = 0
    for i in strength.argsort(descending=True)[:6].tolist():
        flipped = flat.clone()
        flipped[i] = alt[i]
        change = float(loss_of(flipped.view(tr.predictor.shape))) - float(base)
        predicted = float(diff[i, alt[i]])
        assert np.sign(change) == -np.sign(predicted), (i, change, predicted)
        checked += 1
    assert checked == 6 and strength.max() > 0


# ---- training -------------------------------------------------------------------------------------
def test_two_stage_training_meets_the_budget_logs_both_stages_and_resumes_identically(model_pipe, tmp_path,
                                                                                      monkeypatch):
    cell, pipe = model_pipe
    done = trainer(cell, pipe).train(tmp_path / "a.ckpt", progress=False)
    assert int(done.units.sum()) == trainer(cell, pipe).budget            # the exact budget
    stages = [e["stage"] for e in done.meta["loss_curve"] if "loss" in e]
    assert stages == [1, 1, 2, 2]
    warm = [e for e in done.meta["loss_curve"] if e.get("event") == "warm_start"]
    assert len(warm) == 1 and all(isinstance(t, int) for t in warm[0]["full_steps"])
    assert done.cost is not None and not torch.equal(done.cost, torch.zeros_like(done.cost))

    # Interrupt a second run after three iterations, then resume from its checkpoint.
    calls = {"n": 0}
    real = Trainer.loss

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer(cell, pipe).train(tmp_path / "b.ckpt", progress=False)
    monkeypatch.setattr(Trainer, "loss", real)
    resumed = trainer(cell, pipe).train(tmp_path / "b.ckpt", progress=False)
    assert torch.equal(resumed.units, done.units)
    assert torch.allclose(resumed.cost, done.cost)
    with pytest.raises(ValueError, match="other settings"):
        trainer(cell, pipe, delta=5.0).train(tmp_path / "b.ckpt", progress=False)


def test_single_stage_trains_layer_costs_only(model_pipe):
    cell, pipe = model_pipe
    tr = trainer(cell, pipe, two_stage=False)
    assert tr.stages() == [(2, 4)]
    sched = tr.train(None, progress=False)
    assert int(sched.units.sum()) == tr.budget
    assert torch.equal(tr.predictor.step_cost, torch.zeros_like(tr.predictor.step_cost))   # never trained


def test_stage_one_forces_the_step_dp_full_steps():
    p = CostPredictor(steps=6, blocks=2, sublayers=2, candidates=5)
    p.init_from_units(torch.full(p.shape, 2))
    p.init_steps([2, 4])
    assert p.full_steps(2) == [2, 4]
    budget = dp.budget_units(p.items, 5, 0.4)
    gates, units, forced = p.gates(budget, full_steps=2)
    assert forced == [2, 4] and (units[[1, 3]] == 0).all() and int(units.sum()) == budget
    assert torch.equal(gates.detach().argmax(-1), units)                    # forward: the hard choice
    (gates[1, 0, 0, 0] - gates[2, 0, 0, 3]).backward()
    assert p.step_cost.grad.abs().sum() > 0 and p.layer_cost.grad.abs().sum() > 0
    p.warm_start([2], delta=10)
    assert (p.layer_cost.view(*p.shape, 5)[1, :, :, 0] < -9).all()


def test_mac_budget_weights_items_by_per_token_macs(model_pipe):
    cell, pipe = model_pipe
    w = token_mac_weights(cell.adapter, pipe)
    if cell.model == "tiny_flux":  # items of both groups in one row, in units of D² per token:
        # dual: attention to_q + to_out + add_q_proj + to_add_out = 4, each MLP 8; single: to_q = 1,
        # mlp_out = proj_mlp (4) + proj_out (5) = 9; key/value projections see every token whatever k is
        assert w.tolist() == [[4, 8, 8, 4, 8, 8, 1, 9, 1, 9]]
    else:
        assert w.shape[1] == len(cell.adapter.groups[0].sublayers)
        t = cell.adapter.preset.transformer
        width = t["num_attention_heads"] * t["attention_head_dim"]
        mlp = t.get("ffn_dim", 4 * width) // width                       # MLP 2·D·inner per token, attention 2D²
        assert (w[:, -1] == mlp).all() and (w[:, :-1] == 1).all()
    m = make_method("diffsparse", ratio=0.5, budget="macs", train={"samples": 2, "batch_size": 2, "loss": "l2"})
    tr = Trainer(cell.adapter, pipe, m, conditions=CONDS[cell.model], num_steps=cell.num_steps,
                 guidance_scale=cell.model_cfg["guidance_scale"])
    tr.initialise()
    units = tr.predictor.layer_units(tr.budget, tr.weights)
    assert int((units.numpy() * tr.weights).sum()) == tr.budget == round(0.5 * tr.weights.sum() * 4)


def test_search_baselines_run_on_a_model_and_meet_the_budget(model_pipe):
    from methods.diffsparse.train_settings import SearchSettings

    cell, pipe = model_pipe
    tr = trainer(cell, pipe)
    for algo in ("ga", "random"):
        s = tr.search(SearchSettings(algorithm=algo, evaluations=5, samples=2, population=3), progress=False)
        assert int(s.units.sum()) == tr.budget
        assert s.meta["search"]["evaluations"] == 5 and s.cost is None
        assert [e["evaluation"] for e in s.meta["loss_curve"]] == [1, 2, 3, 4, 5]


# ---- transfer across resolutions, and MACs ---------------------------------------------------------
def test_a_schedule_trained_at_256_runs_at_512_and_its_counted_macs_follow_the_plan(tmp_path):
    cfg = config_mod.load(REPO / "config.yaml")
    for model in ("pixart_alpha_256", "pixart_alpha_512"):
        cfg["models"][model]["steps"] = 4            # full-size blocks on the meta device; few steps for time
    sched = random_schedule(steps=4, blocks=28, seed=3)
    sched.meta = {"ratio": 0.43, "budget": "items"}
    sched.save(tmp_path / "pixart256.safetensors")
    cfg["methods"]["ds_transfer"] = {"method": "diffsparse", "ratio": 0.43,
                                     "schedule": str(tmp_path / "pixart256.safetensors")}
    macs = {}
    for model in ("pixart_alpha_256", "pixart_alpha_512"):
        cfg["models"][model]["methods"].append("ds_transfer")
        cell = Cell(cfg, model, "ds_transfer")
        counted = count_macs(cell, "meta")["macs_c1"]
        assert predict_macs(cell) == pytest.approx(counted, rel=1e-9)
        macs[model] = counted, count_macs(Cell(cfg, model, "none"), "meta")["macs_c1"]
    # The same fractions at 4x the tokens: the saved share of MACs stays close (K/V projections aside).
    saved = {m: 1 - a / b for m, (a, b) in macs.items()}
    assert 0.2 < saved["pixart_alpha_256"] < 0.8
    assert saved["pixart_alpha_512"] == pytest.approx(saved["pixart_alpha_256"], abs=0.05)
    bad = copy.deepcopy(cfg)
    bad["models"]["pixart_alpha_256"]["steps"] = 10
    with pytest.raises(ValueError, match="trained for T=4"):
        count_macs(Cell(bad, "pixart_alpha_256", "ds_transfer"), "meta")


def test_a_schedule_trained_on_other_weights_or_sampling_is_refused_by_key(tmp_path):
    from dsbench.provenance import weights_id

    cfg = tiny_config()
    toca = {"fresh_ratio": 0.3, "threshold": 3, "grid": 2}
    cfg["methods"]["ds"] = {"method": "diffsparse", "ratio": 0.43, "toca": toca,
                            "schedule": str(tmp_path / "s.safetensors")}
    cfg["models"]["tiny_pixart"]["methods"].append("ds")
    m = cfg["models"]["tiny_pixart"]
    steps, blocks = m["steps"], Cell(cfg, "tiny_pixart", "none").adapter.preset.transformer["num_layers"]
    sched = random_schedule(steps=steps, blocks=blocks)
    trained = {"ratio": 0.43, "budget": "items", "scheduler": m["scheduler"], "guidance": m["guidance_scale"],
               "toca": toca, "weights_id": weights_id(Cell(cfg, "tiny_pixart", "ds"))}
    sched.meta = trained
    sched.save(tmp_path / "s.safetensors")
    Cell(cfg, "tiny_pixart", "ds").check_ready()            # trained on this model's sampling: accepted
    for key, value, shown in [("weights_id", "proxy other", "weights_id: 'proxy other'"),
                              ("guidance", 9.0, "guidance: 9.0"), ("scheduler", "ddim", "scheduler: 'ddim'"),
                              ("toca", {**toca, "grid": 4}, "toca: ")]:
        sched.meta = {**trained, key: value}
        sched.save(tmp_path / "s.safetensors")
        with pytest.raises(ValueError, match="was trained under other settings") as e:
            Cell(cfg, "tiny_pixart", "ds").check_ready()
        assert shown in str(e.value) and "retrain it (rule train_schedule)" in str(e.value)


def test_train_schedule_cli_refuses_bad_targets_before_any_work(tmp_path, capsys):
    from dsbench.cli import main

    cfg = tiny_config()
    cfg["methods"]["ds"] = {"method": "diffsparse", "ratio": 0.43, "train": {"samples": 2, "batch_size": 2}}
    cfg["models"]["tiny_pixart"]["methods"].append("ds")
    arg = json.dumps(cfg)
    assert main(["train-schedule", "--config", arg, "--model", "tiny_pixart", "--method", "toca",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "has no schedule to train" in capsys.readouterr().err
    (tmp_path / "x.safetensors").write_bytes(b"kept")
    assert main(["train-schedule", "--config", arg, "--model", "tiny_pixart", "--method", "ds",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "x.safetensors").read_bytes() == b"kept"              # nothing overwritten
    assert main(["generate", "--config", arg, "--model", "tiny_pixart", "--method", "ds",
                 "--root", str(tmp_path)]) == 2
    assert "train it first" in capsys.readouterr().err


# ---- several block groups (FLUX) ------------------------------------------------------------------
def flux_schedule(seed=0, steps=4, dual=19, single=38) -> Schedule:
    groups = [("transformer_blocks", dual, ("attn", "ff", "ff_context")), ("single_transformer_blocks", single,
                                                                         ("attn", "mlp_out"))]
    items = dual * 3 + single * 2
    units = torch.randint(0, 5, (steps - 1, 1, items), generator=torch.Generator().manual_seed(seed))
    return Schedule(units, 0.25, (), groups=groups, meta={"ratio": 0.6, "budget": "items"})


def test_a_schedule_over_two_block_groups_round_trips_and_refuses_another_layout(tmp_path):
    s = flux_schedule()
    s.save(tmp_path / "f.safetensors")
    back = Schedule.load(tmp_path / "f.safetensors")
    assert torch.equal(back.units, s.units) and back.groups == s.groups
    plan = back.plan()
    assert [g.name for g in plan.groups] == ["transformer_blocks", "single_transformer_blocks"]
    assert tuple(plan.groups[0].ratios.shape) == (4, 19, 3) and tuple(plan.groups[1].ratios.shape) == (4, 38, 2)
    # item 19·3 of step 1 is the single-stream group's block 0, attn
    assert plan.groups[1].ratios[1, 0, 0] == 1 - 0.25 * int(s.units[0, 0, 57])
    with pytest.raises(ValueError, match=r"trained for T=4 steps × transformer_blocks: 19 blocks"):
        back.check_fits(4, Layout(28, ("attn1", "attn2", "ff"), ("self_attn", "cross_attn", "mlp")))
    from dsbench.figures import heatmap_figure

    fig = heatmap_figure(back, {"transformer_blocks": ("self_attn", "mlp", "mlp"),
                                "single_transformer_blocks": ("self_attn", "mlp")})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["transformer_blocks: self-attention (attn)", "transformer_blocks: MLP (ff)",
                      "transformer_blocks: MLP (ff_context)", "single_transformer_blocks: self-attention (attn)",
                      "single_transformer_blocks: MLP (mlp_out)"]


def test_flux_macs_of_a_schedule_with_partial_joint_attention_are_predicted_exactly(tmp_path):
    """Full-size FLUX.1-schnell on the meta device: queries of a subset of both streams (keys and values of
    every token) in the dual-stream blocks, of the joint sequence in the single-stream ones."""
    cfg = config_mod.load(REPO / "config.yaml")
    s = flux_schedule(seed=5)
    s.save(tmp_path / "flux.safetensors")
    cfg["methods"]["ds_random"] = {"method": "diffsparse", "ratio": 0.6, "schedule": str(tmp_path / "flux.safetensors")}
    cfg["models"]["flux1_schnell_256"]["methods"].append("ds_random")
    cell = Cell(cfg, "flux1_schnell_256", "ds_random")
    counted = count_macs(cell, "meta")["macs_c1"]
    assert predict_macs(cell) == pytest.approx(counted, rel=1e-9)
    assert 0.3 < counted / count_macs(Cell(cfg, "flux1_schnell_256", "none"), "meta")["macs_c1"] < 0.9
