"""Adapters: offline errors, structure, and the torch-free parts the Snakefile imports."""
import subprocess
import sys

import pytest

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
    assert {r["needed_by"] for r in rows} >= {"pixart_alpha_256", "dit_xl_2_256", "metrics"}
    assert check(config_mod.load(REPO / "tests" / "tiny.yaml")) == []  # tiny runs need nothing external
    proxy_rows = check(config_mod.load(REPO / "tests" / "smoke.yaml"))  # the proxies: only committed weights
    assert {r["needed_by"] for r in proxy_rows} == {"proxy_dit", "proxy_pixart"}
    assert all(r["present"] for r in proxy_rows), report(proxy_rows)


def test_structure_of_the_adapters():
    pixart, dit = get_adapter("pixart_alpha_256"), get_adapter("dit_xl_2_256")
    assert pixart.sublayers == ("attn1", "attn2", "ff") and dit.sublayers == ("attn1", "ff")
    assert pixart.token_grid() == (16, 16) and get_adapter("pixart_alpha_512").token_grid() == (32, 32)
    pipe = pixart.build("meta", scheduler="dpm_solver_pp")
    assert len(pixart.blocks(pipe)) == 28
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())


def test_workflow_side_imports_no_torch():
    code = ("import sys; import dsbench.config, dsbench.samples, dsbench.tables, models.registry; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
