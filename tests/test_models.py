"""Adapters: offline errors, structure, and the torch-free parts the Snakefile imports."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsbench import config as config_mod
from dsbench.doctor import check, report
from models import get_adapter
from models.weights import MissingWeightsError
from tests.util import REPO


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_real_weights_missing_is_a_clear_error(empty_hf_cache):
    with pytest.raises(MissingWeightsError, match=r"PixArt-alpha/PixArt-XL-2-256x256.*hf download"):
        get_adapter("pixart_alpha_256").build("real", scheduler="dpm_solver_pp")
    with pytest.raises(MissingWeightsError, match=r"facebook/DiT-XL-2-256"):
        get_adapter("dit_xl_2_256").build("real", scheduler="ddim")
    with pytest.raises(ValueError, match="tiny model"):
        get_adapter("tiny_pixart").build("real", scheduler="ddim")


def test_local_weights_directory_is_used_as_is(tmp_path):
    from models.weights import resolve

    assert resolve(str(tmp_path)) == tmp_path


def test_doctor_lists_what_is_missing_and_how_to_get_it(empty_hf_cache):
    rows = check(config_mod.load(REPO / "config.yaml"))
    text = report(rows)
    assert "MISSING" in text and "hf download facebook/DiT-XL-2-256" in text
    assert "inception-2015-12-05.pt" in text and "COCO_caption_prompts_30k.txt" in text
    assert {r["needed_by"] for r in rows} == {"table1", "table2", "table3", "table4", "table9"}
    assert check(config_mod.load(REPO / "tests" / "tiny.yaml")) == []  # tiny runs need nothing external
    proxy_rows = check(config_mod.load(REPO / "tests" / "smoke.yaml"))  # the proxies: only committed weights
    assert {r["needed_by"] for r in proxy_rows} == {"table1", "table2"}   # ... and cache-dit for the peer rows,
    assert all(r["present"] for r in proxy_rows), report(proxy_rows)     # listed once, under the first table
    assert [r["needed_by"] for r in proxy_rows if r["what"] == "cache-dit (peer rows)"] == ["table1"]


def test_doctor_names_the_extra_when_cache_dit_is_missing(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cache_dit" else find_spec(name, *a))
    text = report(check(config_mod.load(REPO / "tests" / "smoke.yaml")))
    assert "[MISSING] table1   cache-dit (peer rows)" in text and 'get it: pip install -e ".[peers]"' in text
    assert text.endswith("1 missing")


def test_structure_of_the_adapters():
    pixart, dit = get_adapter("pixart_alpha_256"), get_adapter("dit_xl_2_256")
    assert pixart.groups[0].sublayer_names == ("attn1", "attn2", "ff") and dit.groups[0].sublayer_names == ("attn1", "ff")
    assert pixart.token_grid() == (16, 16) and get_adapter("pixart_alpha_512").token_grid() == (32, 32)
    pipe = pixart.build("meta", scheduler="dpm_solver_pp")
    assert len(pixart.blocks(pipe)) == 28
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())


def test_workflow_side_imports_no_torch():
    code = ("import sys; import dsbench.config, dsbench.samples, dsbench.tables, models.registry; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _fake_hub_repo(hub, repo):
    snap = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text("{}")
    (snap.parent.parent / "refs").mkdir(exist_ok=True)
    (snap.parent.parent / "refs" / "main").write_text("abc")


def test_doctor_cli_tables_1_to_4_and_9_missing_then_present(empty_hf_cache, tmp_path, monkeypatch, capsys):
    """On a bare machine every file of Tables 1-4 and 9 is listed missing with its source and the
    command exits 1; once a fake resources/ tree (and HF cache, torch hub, envs) holds them: exit 0."""
    import yaml

    from dsbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["resources"] = str(tmp_path / "resources")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["doctor", "--config", "c.yaml"]) == 1
    out = capsys.readouterr().out
    for needle in ("COCO_caption_prompts_30k.txt", "PartiPrompts.tsv", "VIRTUAL_imagenet256_labeled.npz",
                   "weights-inception-2015-12-05-6726825d.pth", "clip-vit-large-patch14", "ImageReward.pt",
                   "VBench_full_info.json", "ViClip-InternVid-10M-FLT.pth", "bert-base-uncased", ".venv-vbench", "black-forest-labs/FLUX.1-schnell",
                   "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "alexnet-owt-7be5be79.pth", "open_clip_vit_l14_openai.bin",
                   "sparsedit_xl_2_256"):
        assert needle in out, needle
    rows = check(config_mod.load(tmp_path / "c.yaml"))
    peers = [r for r in rows if r["what"] == "cache-dit (peer rows)"]   # an installed package, not a file
    assert [r["how"] for r in peers] == ['pip install -e ".[peers]"'] and peers[0]["present"]
    rows = [r for r in rows if r not in peers]
    assert not any(r["present"] for r in rows)
    assert all(r["how"] for r in rows)
    hub = empty_hf_cache / "hub"
    for r in rows:  # build each thing where the doctor looks for it
        where = Path(r["where"])
        if r["what"] == "weights":
            _fake_hub_repo(hub, r["where"])
        elif r["what"].endswith("environment"):
            (where / "bin").mkdir(parents=True)
            (where / "bin" / "python").write_text("")
            (where / ".done").write_text("")  # the build marker metrics/external.py writes last
        elif r["what"].startswith("SparseDiT weights"):
            where.mkdir(parents=True)
            (where / "provenance.json").write_text("{}")
        elif r["what"] in ("reference images", "CLIP (transformers)"):
            where.mkdir(parents=True)
            (where / ("config.json" if "CLIP" in r["what"] else "000000.png")).write_text("x")
        else:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text("x")
    assert main(["doctor", "--config", "c.yaml"]) == 0
    assert "0 missing" in capsys.readouterr().out


def test_ddim_is_dits_ddim_on_every_source():
    """DiT's DDIM: the hub repo's DDPM config (clip_sample=True, as diffusers' conversion script saves it)
    becomes a DDIM that does not clip x0; tiny and proxy DDIMs have the same settings; 50 steps sample the
    timesteps 980, 960, ..., 0 (guided-diffusion's respaced ddim50) and the last step goes to alpha_bar = 1."""
    from diffusers import DDPMScheduler

    from models.base import new_scheduler, scheduler_from_config, step_clock

    real = scheduler_from_config("ddim", DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)
    tiny = new_scheduler("ddim")
    for s in (real, tiny):
        assert s.config.clip_sample is False and s.config.set_alpha_to_one is True
        assert s.config.beta_schedule == "linear" and s.config.beta_start == 0.0001 and s.config.beta_end == 0.02
        s.set_timesteps(50)
        assert s.timesteps.tolist() == list(range(980, -1, -20))
        assert float(s.final_alpha_cumprod) == 1.0
        assert step_clock(s) == "down"
    assert step_clock(new_scheduler("dpm_solver_pp")) == "up" and step_clock(new_scheduler("unipc_flow")) == "up"


def test_guided_channels_follow_the_official_dit_sampler():
    """guided_channels=3: the uncond rows' 4th latent channel is the cond rows' own, so guidance leaves it at
    the conditional prediction; 4 (every channel) is diffusers' own output; refused on PixArt."""
    import numpy as np

    from models import get_adapter

    adapter = get_adapter("tiny_dit")
    plain = adapter.build("tiny", scheduler="ddim")
    three = adapter.build("tiny", scheduler="ddim", guided_channels=3)
    four = adapter.build("tiny", scheduler="ddim", guided_channels=4)
    x = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([500] * 4), torch.tensor([3, 7, 1000, 1000])
    with torch.no_grad():
        raw = plain.transformer(x, timestep=t, class_labels=labels).sample
        hooked = three.transformer(x, timestep=t, class_labels=labels).sample
        no_cfg = three.transformer(x, timestep=t, class_labels=torch.tensor([3, 7, 1, 2])).sample
    assert torch.equal(hooked[:2], raw[:2]) and torch.equal(hooked[2:, :3], raw[2:, :3])
    assert torch.equal(hooked[2:, 3], raw[:2, 3]) and torch.equal(hooked[2:, 4:], raw[2:, 4:])
    assert not torch.equal(raw[2:, 3], raw[:2, 3])
    with torch.no_grad():
        assert torch.equal(no_cfg, plain.transformer(x, timestep=t, class_labels=torch.tensor([3, 7, 1, 2])).sample)
    kw = dict(num_steps=4, guidance_scale=4.0)
    with torch.inference_mode():
        a, b, c = (adapter.sample(p, [3, 404], [1, 2], **kw) for p in (plain, four, three))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="guided_channels is a DiT setting"):
        get_adapter("tiny_pixart").build("tiny", scheduler="dpm_solver_pp", guided_channels=3)
    with pytest.raises(ValueError, match=r"guided_channels must be in \[1, 4\]"):
        adapter.build("tiny", scheduler="ddim", guided_channels=5)
