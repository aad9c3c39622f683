"""SparseDiT fine-tuning: DiT's hybrid loss by hand, the latents folder, determinism, resume after SIGKILL,
refused checkpoints, settings errors and the CLI verb."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel
from safetensors.torch import load_file, save_file

from dsbench.diffusion_loss import (PosteriorTerms, approx_std_normal_cdf, diffusion_loss,
                                    discretised_gaussian_nll, normal_kl)
from dsbench.latents import LatentFolder
from dsbench.sparsedit_train import FinetuneSettings, checkpoint_dir, finetune, state_digest, variant_settings
from models.base import seeded

REPO = Path(__file__).resolve().parents[1]
PLAN = dict(num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 2, 1, 1], num_top_blocks=0,
            pruning_rates=[0.61, 0.86])  # on 8×8 tokens: g = 5 near the data, 3 at pure noise


# ---- the loss, by hand ------------------------------------------------------------------------------
def phi(x: float) -> float:  # the tanh approximation of the standard normal CDF, in plain floats
    return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_normal_kl_by_hand():
    # KL(N(0.5, 0.5²) ‖ N(−0.5, 2²)) = log(2/0.5) + (0.5² + 1²)/(2·2²) − 1/2
    got = normal_kl(torch.tensor(0.5), torch.tensor(math.log(0.25)), torch.tensor(-0.5), torch.tensor(math.log(4.0)))
    assert got.item() == pytest.approx(math.log(4) + 1.25 / 8 - 0.5, rel=1e-6)
    assert normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0)).item() == 0


def test_discretised_gaussian_nll_by_hand():
    half = 1 / 255
    x, mean, s = torch.tensor([0.2, -1.0, 1.0]), torch.tensor([0.1, -0.9, 0.95]), torch.tensor([0.05, 0.1, 0.02])
    got = discretised_gaussian_nll(x, mean, s.log()).tolist()
    want = [-math.log(phi((0.1 + half) / 0.05) - phi((0.1 - half) / 0.05)),   # an interior bin
            -math.log(phi((-0.1 + half) / 0.1)),                             # the lowest bin reaches −∞
            -math.log(1 - phi((0.05 - half) / 0.02))]                        # the highest bin reaches +∞
    assert got == pytest.approx(want, rel=1e-5)
    exact = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))                  # the approximation is close to Φ
    assert abs(approx_std_normal_cdf(torch.tensor(0.7)).item() - exact(0.7)) < 2e-4


def hand_terms(t: int):
    betas = DDPMScheduler(num_train_timesteps=1000).betas.double().tolist()
    ab = math.prod(1 - b for b in betas[:t + 1])
    ab_prev = ab / (1 - betas[t])
    post_var = lambda k: betas[k] * (1 - math.prod(1 - b for b in betas[:k])) / (1 - math.prod(1 - b for b in betas[:k + 1]))
    return betas[t], ab, ab_prev, post_var(max(t, 1))  # β̃_0 = 0 is clipped to β̃_1


def test_hybrid_loss_by_hand_at_t0_and_t500():
    """One pixel, one channel: ε-MSE, plus the bound on the learned variance (v = 0.2: 60 % of the way from
    log β̃_t to log β_t) with the mean from the predicted ε: the KL at t = 500, the decoder NLL at t = 0."""
    x0, noise, eps, v = 2 * 166 / 255 - 1, -0.7, -0.5, 0.2
    want = []
    for t in (0, 500):
        beta, ab, ab_prev, post_var = hand_terms(t)
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
        log_var = 0.6 * math.log(beta) + 0.4 * math.log(post_var)
        c0, ct = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
        x0_pred = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        mean, true_mean = c0 * x0_pred + ct * xt, c0 * x0 + ct * xt
        if t == 0:
            s, half = math.exp(0.5 * log_var), 1 / 255
            nats = -math.log(phi((x0 - mean + half) / s) - phi((x0 - mean - half) / s))
        else:
            lv1 = math.log(post_var)
            nats = 0.5 * (-1 + log_var - lv1 + math.exp(lv1 - log_var) + (true_mean - mean) ** 2 * math.exp(-log_var))
        want.append(((eps - noise) ** 2, nats / math.log(2), xt))
    terms = PosteriorTerms(DDPMScheduler(num_train_timesteps=1000).betas)
    out = torch.tensor([[[[eps]], [[v]]]] * 2, requires_grad=True)                # (2, 2, 1, 1): ε, v
    got = diffusion_loss(out, torch.full((2, 1, 1, 1), x0), torch.tensor([w[2] for w in want]).view(2, 1, 1, 1),
                         torch.tensor([0, 500]), torch.full((2, 1, 1, 1), noise), terms)
    assert got["mse"].tolist() == pytest.approx([w[0] for w in want], rel=1e-5)
    assert got["vb"].tolist() == pytest.approx([w[1] for w in want], rel=1e-4)
    assert got["loss"].tolist() == pytest.approx([w[0] + w[1] for w in want], rel=1e-4)
    got["vb"].sum().backward()  # the bound trains the variance only: the mean's gradient is stopped
    assert torch.all(out.grad[:, 0] == 0) and torch.all(out.grad[:, 1] != 0)


def test_fixed_variance_model_gets_eps_mse_only():
    out, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    terms = PosteriorTerms(DDPMScheduler(num_train_timesteps=1000).betas)
    got = diffusion_loss(out, x, x, torch.tensor([3, 900]), x, terms)
    assert torch.equal(got["loss"], ((out - x) ** 2).mean(dim=(1, 2, 3))) and not got["vb"].any()
    with pytest.raises(ValueError, match="outputs 5 channels for 3-channel data"):
        diffusion_loss(torch.randn(2, 5, 4, 4), x, x, torch.tensor([3, 900]), x, terms)


# ---- the latents folder ---------------------------------------------------------------------------------
def write_latents(folder: Path, sizes=(5, 3), channels=4, side=8, dtype=torch.float16) -> torch.Tensor:
    folder.mkdir(parents=True, exist_ok=True)
    rows, g = [], torch.Generator().manual_seed(0)
    for k, n in enumerate(sizes):
        lat = torch.randn(n, channels, side, side, generator=g).to(dtype)
        save_file({"latents": lat, "labels": torch.arange(n, dtype=torch.int64) + 10 * k}, str(folder / f"{k:03d}.safetensors"))
        rows.append(lat)
    return torch.cat(rows).float()


def test_latent_folder_reads_deterministic_epochs(tmp_path):
    rows = write_latents(tmp_path / "lat")
    data = LatentFolder(tmp_path / "lat", channels=4, size=8, num_classes=20, seed=3)
    assert data.n == 8 and data.labels.tolist() == [0, 1, 2, 3, 4, 10, 11, 12]
    x0, y0 = data.batch(0, 4)
    x1, y1 = data.batch(1, 4)
    seen = torch.cat([y0, y1]).tolist()
    assert sorted(seen) == data.labels.tolist()                   # one epoch: every sample once
    index = {lab: i for i, lab in enumerate(data.labels.tolist())}
    assert torch.equal(torch.cat([x0, x1]), rows[[index[lab] for lab in seen]])
    again = LatentFolder(tmp_path / "lat", channels=4, size=8, num_classes=20, seed=3)
    assert torch.equal(again.batch(1, 4)[0], x1) and again.batch(2, 4)[1].tolist() != y0.tolist()  # a new order


@pytest.mark.parametrize("make, message", [
    (lambda f: write_latents(f, channels=3), r"latents are F16 \(5, 3, 8, 8\); this model needs float \(n, 4, 8, 8\)"),
    (lambda f: save_file({"latents": torch.zeros(2, 4, 8, 8), "labels": torch.zeros(3, dtype=torch.int64)},
                         str(f / "a.safetensors")), r"labels are I64 \(3,\); expected int64 \(2,\)"),
    (lambda f: save_file({"latents": torch.zeros(2, 4, 8, 8), "labels": torch.zeros(2, dtype=torch.int64),
                          "x": torch.zeros(1)}, str(f / "a.safetensors")), "exactly `latents` and `labels`"),
    (lambda f: save_file({"latents": torch.zeros(2, 4, 8, 8), "labels": torch.tensor([3, 20])},
                         str(f / "a.safetensors")), r"1 label\(s\) outside \[0, 20\), e.g. 20"),
    (lambda f: None, "no \\*.safetensors latent shards"),
])
def test_latent_folder_refuses_bad_shards(tmp_path, make, message):
    (tmp_path / "lat").mkdir()
    make(tmp_path / "lat")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        LatentFolder(tmp_path / "lat", channels=4, size=8, num_classes=20)
    assert "\n" not in str(err.value)


# ---- the fine-tune ----------------------------------------------------------------------------------------
def tiny_dit() -> DiTTransformer2DModel:
    """A pixel-space DiT with a learned σ (6 output channels) on 16×16 images: 8×8 tokens, 6 blocks."""
    with seeded(0):
        return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6,
                                     num_layers=6, sample_size=16)


def run(out, *, seed=0, steps=6, lr=1e-4, force=False, on_checkpoint=None) -> dict:
    dit = tiny_dit()
    settings = FinetuneSettings(steps=steps, batch=4, lr=lr, checkpoint_every=2, seed=seed)
    return finetune(dit, out, plan=PLAN, settings=settings, force=force, progress=False, on_checkpoint=on_checkpoint,
                    source={"model": "tiny", "source": "tiny", "sha256": {"state_dict": state_digest(dit)}})


def final_state(out: Path, steps=6, **kw) -> dict:
    """Run, keeping the last checkpoint's raw weights and EMA (the run deletes its checkpoints when done)."""
    store: dict = {}

    def keep(step):
        if step == steps:
            store.update(torch.load(checkpoint_dir(out) / "last.pt", weights_only=True))

    run(out, steps=steps, on_checkpoint=keep, **kw)
    return {"model": store["model"], "ema": store["ema"]["shadow_params"],
            "saved": load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))}


def assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys() and a["saved"].keys() == b["saved"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(a["ema"]) == len(b["ema"]) and all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))
    assert all(torch.equal(a["saved"][k], b["saved"][k]) for k in a["saved"])


def test_finetune_is_deterministic_from_its_seed(tmp_path):
    from models.proxy import verified
    from models.sparsedit import SparseDiTTransformer2DModel

    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert_same(a, b)
    c = final_state(tmp_path / "c", seed=1)
    assert not torch.equal(a["saved"]["proj_out_2.weight"], c["saved"]["proj_out_2.weight"])
    info = verified(tmp_path / "a")  # every weight file's SHA-256 as recorded
    assert info["loss"] == "eps_mse+vb" and info["steps_done"] == 6 and info["resumed_at"] == []
    assert {i["grid"] for i in info["density_intervals"]} == {3, 4, 5}
    lines = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,mse,vb,grid" and len(lines) == 7
    assert not checkpoint_dir(tmp_path / "a").exists()
    model = SparseDiTTransformer2DModel.from_pretrained(tmp_path / "a" / "transformer")
    assert model.config.num_sdtms == 1 and model.config.density_intervals is None  # continuous r(t) to sample
    # the raw weights moved away from the converted DiT's, and the EMA differs from the raw weights
    assert not torch.equal(a["model"]["transformer_blocks.4.linear_1.weight"], torch.zeros(16, 16))
    assert not torch.equal(a["saved"]["proj_out_2.weight"], a["model"]["proj_out_2.weight"])


KILLED = """
import sys, time
from pathlib import Path
from tests.test_sparsedit_train import run

def hang(step):
    if step == 4:  # the checkpoint at step 4 is written: wait to be killed mid-run
        Path(sys.argv[2]).write_text("4")
        time.sleep(600)

run(Path(sys.argv[1]), on_checkpoint=hang)
"""


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    straight = final_state(tmp_path / "straight")
    out, marker = tmp_path / "killed", tmp_path / "at_checkpoint"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(out), str(marker)], env=env, cwd=REPO)
    try:
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the subprocess ended (rc {proc.poll()}) before its checkpoint at step 4"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert torch.load(checkpoint_dir(out) / "last.pt", weights_only=True)["step"] == 4
    resumed = final_state(out)
    assert_same(straight, resumed)
    assert json.loads((out / "provenance.json").read_text())["resumed_at"] == [4]
    assert (out / "loss.csv").read_text() == (tmp_path / "straight" / "loss.csv").read_text()


class Stop(Exception):
    pass


def stop_at(k):
    def hook(step):
        if step == k:
            raise Stop
    return hook


def test_foreign_corrupt_or_other_runs_checkpoints_are_refused(tmp_path):
    out = tmp_path / "out"
    ckpt = checkpoint_dir(out) / "last.pt"
    ckpt.parent.mkdir(parents=True)
    for content, message in [(b"not a checkpoint", "not a readable plain-tensor checkpoint"),
                             ({"step": 2}, r"not a SparseDiT fine-tuning checkpoint"),
                             ({"when": __import__("datetime").date(2025, 1, 1)}, "not a readable plain-tensor")]:
        if isinstance(content, bytes):
            ckpt.write_bytes(content)
        else:
            torch.save(content, ckpt)
        with pytest.raises(ValueError, match=message) as err:
            run(out)
        assert "\n" not in str(err.value) and "delete" in str(err.value)
    ckpt.unlink()
    with pytest.raises(Stop):
        run(out, on_checkpoint=stop_at(4))                  # a run stopped after its checkpoint at step 4
    with pytest.raises(ValueError, match="belongs to another fine-tune"):
        run(out, lr=2e-4)
    with pytest.raises(ValueError, match="at step 4, beyond the 2 steps asked for"):
        run(out, steps=2)
    run(out, steps=8)                                     # more steps: the same run, extended
    assert json.loads((out / "provenance.json").read_text())["resumed_at"] == [4]


def test_a_finished_fine_tune_is_not_overwritten(tmp_path):
    run(tmp_path / "out", steps=2)
    before = (tmp_path / "out" / "provenance.json").read_text()
    with pytest.raises(FileExistsError, match="already holds a finished fine-tune; pass --force"):
        run(tmp_path / "out", steps=2, seed=1)
    assert (tmp_path / "out" / "provenance.json").read_text() == before
    run(tmp_path / "out", steps=2, seed=1, force=True)
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["settings"]["seed"] == 1


# ---- settings and the CLI -------------------------------------------------------------------------------
LAYERS = {"poolingformers": 1, "sdtms": 1, "sdtm_layout": [1, 2, 1, 1], "top_blocks": 0}
VARIANT = {"method": "sparsedit", "layers": LAYERS, "pruning_rates": [0.61, 0.86], "fixed_grid": None,
           "weights": "somewhere"}


def test_variant_settings_map_to_the_plan():
    plan, s = variant_settings({**VARIANT, "finetune": {"steps": 10, "batch": 2, "lr": 3e-4, "ema": 0.99}}, "methods.v")
    assert plan == {**PLAN, "sparse_grid": None}
    assert (s.steps, s.batch, s.lr, s.ema, s.checkpoint_every, s.seed) == (10, 2, 3e-4, 0.99, 1000, 0)
    assert variant_settings({"method": "sparsedit"}, "m")[1] == FinetuneSettings()  # the recipe's defaults
    assert variant_settings({"method": "sparsedit", "finetune": None}, "m")[1] == FinetuneSettings()


@pytest.mark.parametrize("change, message", [
    ({"method": "toca"}, "methods.v.method must be sparsedit to fine-tune a SparseDiT, got 'toca'"),
    ({"finetune": {"steps": 0}}, "methods.v.finetune.steps must be >= 1, got 0"),
    ({"finetune": {"lr": "1e-4"}}, "methods.v.finetune.lr must be a number, got '1e-4'"),
    ({"finetune": {"ema": 1.0}}, r"methods.v.finetune.ema must be in \[0, 1\), got 1.0"),
    ({"finetune": {"stpes": 5}}, r"methods.v.finetune: unknown setting\(s\) \['stpes'\]; valid: \['batch'"),
    ({"finetune": "fast"}, "methods.v.finetune must be a mapping or null, got 'fast'"),
    ({"finetune": []}, r"methods.v.finetune must be a mapping or null, got \[\]"),
    ({"layers": {**LAYERS, "sdtm_layout": [1, 2, 1]}}, r"methods.v.layers.sdtm_layout must be 4 block counts"),
    ({"pruning_rates": [0.6, "x"]}, r"methods.v.pruning_rates must be \[r_min, r_max\]"),
    ({"layers": {**LAYERS, "poolingformers": 1.5}}, "methods.v.layers.poolingformers must be an integer, got 1.5"),
    ({"fixed_grid": "8"}, "methods.v.fixed_grid must be an integer or null, got '8'"),
])
def test_settings_errors_name_the_key_in_one_line(change, message):
    with pytest.raises(ValueError, match=message) as err:
        variant_settings({**VARIANT, **change}, "methods.v")
    assert "\n" not in str(err.value)


def test_a_variant_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"settings: unknown setting\(s\) \['interval'\]"):
        variant_settings({**VARIANT, "interval": 2}, "settings")


def test_cli_fine_tunes_tiny_dit_on_a_latents_folder(tmp_path, capsys):
    """Latent-space tiny DiT (learned σ) from the preset's seeded weights, on a synthetic latents folder."""
    from dsbench.cli import main

    write_latents(tmp_path / "lat", sizes=(3, 3), side=16, dtype=torch.float32)
    variant = {"method": "sparsedit", "layers": {"poolingformers": 1, "sdtms": 1, "sdtm_layout": [1, 1, 1, 0], "top_blocks": 0},
               "finetune": {"steps": 2, "batch": 2, "checkpoint_every": 1, "latents": str(tmp_path / "lat")}}
    cfg = str(REPO / "tests" / "tiny.yaml")
    args = ["finetune-sparsedit", "--config", cfg, "--model", "tiny_dit", "--out", str(tmp_path / "out")]
    assert main([*args, "--settings", json.dumps(variant)]) == 0
    info = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert info["data"]["kind"] == "latents" and info["data"]["samples"] == 6 and info["loss"] == "eps_mse+vb"
    assert info["source"]["source"] == "tiny" and "--settings" in info["command"]
    assert main([*args, "--settings", json.dumps(variant)]) == 2
    assert "already holds a finished fine-tune" in capsys.readouterr().err
    for bad, message in [({**variant, "layers": {**variant["layers"], "sdtms": 2}}, "the layer plan has 7 blocks"),
                         ({**variant, "finetune": {"steps": 1}}, "set finetune.latents to their folder")]:
        assert main([*args[:-1], str(tmp_path / "bad"), "--settings", json.dumps(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main([*args, "--method", "none"]) == 2
    assert "methods.none.method must be sparsedit" in capsys.readouterr().err


def test_the_rules_config_slice(capsys):
    """The rule's slice: the model's source and weights and the variant are tracked; for a proxy (trained on
    the CPU) the device is not, nor the variant's `weights` (where sampling reads the result)."""
    from dsbench import config as dsconfig
    from dsbench import scope
    from dsbench.cli import main

    cfg = dsconfig.load(REPO / "tests" / "smoke.yaml")
    cfg["methods"]["none"]["weights"] = "elsewhere"  # a stand-in: the smoke has no sparsedit variant
    s = scope.finetune_sparsedit(cfg, "proxy_dit", "none")
    trigger = scope.trigger(s)
    assert "device" not in trigger and "weights" not in trigger["methods"]["none"]
    assert trigger["models"]["proxy_dit"] == {"source": "proxy", "methods": ["none"]}
    del cfg["methods"]["none"]["weights"]
    text = scope.dumps(scope.finetune_sparsedit(cfg, "proxy_dit", "none"))
    assert main(["finetune-sparsedit", "--config", text, "--model", "proxy_dit", "--method", "none",
                 "--out", "unused"]) == 2
    assert "methods.none.method must be sparsedit" in capsys.readouterr().err
