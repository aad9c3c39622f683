"""MACs counted while sampling runs: the paper's figures on full-size meta models, meta == real counts."""
import json
import subprocess
import sys

import pytest

from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.measure import count_macs
from tests.util import REPO, tiny_config, with_dit


def test_meta_count_equals_real_count_on_tiny_models():
    cfg = with_dit(tiny_config())
    for model in ("tiny_pixart", "tiny_dit"):
        for method in ("none", "steps_50"):
            meta = count_macs(Cell(cfg, model, method), "meta")
            real = count_macs(Cell(cfg, model, method), "cpu")
            assert meta["macs_c1"] == real["macs_c1"] > 0
            assert meta["macs_total"] == real["macs_total"] > meta["macs_c1"]
            assert meta["denoiser_calls"] == Cell(cfg, model, method).num_steps


def test_steps_halves_macs_and_counts_scale_per_image():
    cfg = tiny_config()
    none, half = count_macs(Cell(cfg, "tiny_pixart", "none")), count_macs(Cell(cfg, "tiny_pixart", "steps_50"))
    assert half["macs_c1"] == pytest.approx(none["macs_c1"] / 2, rel=1e-12)
    three = count_macs(Cell(cfg, "tiny_pixart", "none"), images=3)
    assert three["macs_c1"] == pytest.approx(none["macs_c1"], rel=1e-12)  # per image, batch-independent
    # macs_total includes the CFG batch: at least twice the single-branch linear count.
    assert none["macs_total"] > 2 * none["macs_c1"]


def test_pixart_alpha_256_none_matches_the_paper_via_cli():
    out = subprocess.run([sys.executable, "-m", "dsbench", "macs", "--model", "pixart_alpha_256", "--method",
                          "none", "--device", "meta", "--json"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["num_steps"] == 20 and r["denoiser_calls"] == 20
    assert r["macs_c1"] == pytest.approx(2.86e12, rel=0.01)       # paper Table 1
    assert r["macs_total"] == pytest.approx(5.962e12, rel=0.01)   # attention + CFG batch (reference note §4)
    text = subprocess.run([sys.executable, "-m", "dsbench", "macs", "--model", "pixart_alpha_256", "--method",
                           "steps", "--set", "ratio=0.5"], cwd=REPO, capture_output=True, text=True)
    assert "macs_c1 1.428 T" in text.stdout, text.stdout + text.stderr


def test_dit_xl_2_macs_and_the_papers_cfg_convention():
    cfg = config_mod.load(REPO / "config.yaml")
    r = count_macs(Cell(cfg, "dit_xl_2_256", "none"), "meta")
    assert r["num_steps"] == 50
    assert r["macs_c1"] == pytest.approx(5.72e12, rel=0.01)
    assert 2 * r["macs_c1"] == pytest.approx(11.44e12, rel=0.01)  # the paper counts the CFG batch of 2


@pytest.mark.parametrize("variant,target", [
    ("fora_n2", 1.43e12), ("deepcache_n2", 1.48e12), ("toca", 1.64e12), ("taylorseer_n2", 1.57e12),
    ("duca", 1.54e12),
])
def test_pixart_alpha_256_baselines_match_the_paper(variant, target):
    """Table 1's MACs (and the DuCa README config's 1.54 T), counted on the meta device, within 1 %."""
    cfg = config_mod.load(REPO / "config.yaml")
    assert count_macs(Cell(cfg, "pixart_alpha_256", variant), "meta")["macs_c1"] == pytest.approx(target, rel=0.01)


def test_toca_faithful_quirk_gives_the_official_codes_count():
    cfg = config_mod.load(REPO / "config.yaml")
    cfg["methods"]["toca"]["faithful_quirk"] = True
    assert count_macs(Cell(cfg, "pixart_alpha_256", "toca"), "meta")["macs_c1"] == pytest.approx(1.57e12, rel=0.01)


def test_fora_on_dit_counts_the_official_countdown_steps_via_cli():
    """FORA N = 3 on DiT-XL/2's DDIM-50: full at the first step and where the countdown index 49 − s is a
    multiple of 3, i.e. 18 steps (0, 1, 4, ..., 49); an up-counting clock would give 17 (0, 3, ..., 48)."""
    out = subprocess.run([sys.executable, "-m", "dsbench", "macs", "--model", "dit_xl_2_256", "--method",
                          "fora_n3", "--device", "meta"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expect = [0] + list(range(1, 50, 3))
    assert f"in sampling order: 18: {', '.join(map(str, expect))}" in out.stdout, out.stdout
    cfg = config_mod.load(REPO / "config.yaml")
    full = count_macs(Cell(cfg, "dit_xl_2_256", "none"), "meta")["macs_c1"]
    fora = count_macs(Cell(cfg, "dit_xl_2_256", "fora_n3"), "meta")
    assert fora["plan_full_steps"] == expect
    per_step = full / 50
    assert 18 * per_step < fora["macs_c1"] < 18 * per_step + 32 * 0.01 * per_step   # + adaLN/embedders on reuse
