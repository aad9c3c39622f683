"""One engine for every family: each method on tiny PixArt, DiT, Wan and FLUX. Computing everything gives
the plain pipeline's output bit for bit, accelerated runs are deterministic and differ, MACs predicted from
a plan equal MACs counted while running, and no method module branches on the model family."""
import copy
import re

import numpy as np
import pytest

from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.measure import count_macs, predict_macs
from tests.util import REPO, tiny_config, with_dit, with_flux, with_wan

FAMILIES = ("tiny_pixart", "tiny_dit", "tiny_wan", "tiny_flux")
# Per family, the ToCa/DuCa settings its config would use (FLUX: the official FLUX code's formulas).
TOKEN = {"tiny_pixart": {"grid": 2}, "tiny_dit": {"constants": "dit", "cfg_choice": "per_row", "bonus": 0.6, "grid": 2},
         "tiny_wan": {"score": "vnorm", "grid": 2},
         "tiny_flux": {"constants": "flux", "bonus": 0.0, "threshold": 2,
                       "group_factors": {"transformer_blocks": 0.4, "single_transformer_blocks": 1.6}}}
STATIC = {"fora": {"method": "fora", "interval": 2}, "deepcache": {"method": "deepcache", "interval": 2},
          "taylorseer": {"method": "taylorseer", "interval": 2, "first_enhance": 1},
          "toca": {"method": "toca", "fresh_ratio": 0.5}, "duca": {"method": "duca", "fresh_ratio": 0.75}}
ALL = {"fora_all": {"method": "fora", "interval": 1}, "deepcache_all": {"method": "deepcache", "interval": 1},
       "taylorseer_all": {"method": "taylorseer", "interval": 1}, "toca_all": {"method": "toca", "threshold": 1},
       "duca_all": {"method": "duca", "threshold": 1}, "dicache_all": {"method": "dicache", "threshold": 0.0}}


def _variant(model: str, name: str, spec: dict) -> dict:
    return {**TOKEN[model], **spec} if spec["method"] in ("toca", "duca") else spec


@pytest.fixture(scope="module")
def cfg():
    c = with_flux(with_wan(with_dit(tiny_config()), num_samples=2), num_samples=2)
    c = copy.deepcopy(c)
    names = ["none", *STATIC, "dicache", *ALL]
    for model in FAMILIES:
        for name, spec in {**STATIC, **ALL, "dicache": {"method": "dicache", "threshold": 3.0}}.items():
            c["methods"][f"{model}_{name}"] = _variant(model, name, spec)
        c["models"][model]["methods"] = [*c["models"][model]["methods"], *(f"{model}_{n}" for n in names[1:])]
    return config_mod.validate(c)


@pytest.fixture(scope="module")
def pipes(cfg):
    return {m: Cell(cfg, m, "none").build_pipeline() for m in FAMILIES}


def _conds(model):
    return [3, 404] if model == "tiny_dit" else ["A cat on a mat.", "Two red buses."]


def run(cfg, pipes, model, variant, conditions=None, seeds=(21, 22)):
    cell = Cell(cfg, model, variant if variant == "none" else f"{model}_{variant}")
    with cell.accelerated(pipes[model]) as engine:
        return cell.sample(pipes[model], engine, conditions or _conds(model), list(seeds)).numpy()


@pytest.mark.parametrize("model", FAMILIES)
def test_compute_everything_is_the_plain_pipeline(cfg, pipes, model):
    cell = Cell(cfg, model, "none")
    plain = cell.adapter.sample(pipes[model], _conds(model), [21, 22], num_steps=cell.num_steps,
                                guidance_scale=cell.model_cfg["guidance_scale"]).numpy()
    for variant in ALL:
        if variant.startswith("dicache"):  # one image at a time: compare like with like
            ref = np.concatenate([cell.adapter.sample(pipes[model], [c], [s], num_steps=cell.num_steps,
                                                      guidance_scale=cell.model_cfg["guidance_scale"]).numpy()
                                  for c, s in zip(_conds(model), [21, 22])])
        else:
            ref = plain
        np.testing.assert_array_equal(run(cfg, pipes, model, variant), ref, err_msg=variant)


@pytest.mark.parametrize("model", FAMILIES)
def test_every_method_runs_deterministically_and_changes_the_output(cfg, pipes, model):
    ref = run(cfg, pipes, model, "none")
    for variant in [*STATIC, "dicache"]:
        out = run(cfg, pipes, model, variant)
        assert out.shape == ref.shape and not np.array_equal(out, ref), variant
        np.testing.assert_array_equal(out, run(cfg, pipes, model, variant), err_msg=variant)  # no leaked state


@pytest.mark.parametrize("model", FAMILIES)
def test_macs_predicted_from_each_plan_equal_macs_counted(cfg, model):
    for variant in ["none", *STATIC]:
        cell = Cell(cfg, model, variant if variant == "none" else f"{model}_{variant}")
        counted = count_macs(cell, "meta")["macs_c1"]
        assert predict_macs(cell) == pytest.approx(counted, rel=1e-9), variant


def test_no_method_module_branches_on_the_model_family():
    """Nothing model-specific enters a method: no `family` test and no model-family name in methods/."""
    pattern = re.compile(r"\.family\b|\bfamily\s*(==|!=|in\b)|\b(pixart|dit|wan|flux)\b['\"]?\s*(==|!=|in\b)|"
                         r"isinstance\([^)]*(PixArt|DiT|Wan|Flux)")
    assert all(pattern.search(bad) for bad in ('if adapter.family == "flux":', 'if family in ("wan",):',
                                               "isinstance(pipe.transformer, FluxTransformer2DModel)"))
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sorted((REPO / "methods").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("model", FAMILIES)
def test_library_use_on_every_family(cfg, pipes, model):
    """methods.accelerate on a pipeline as diffusers runs it: the plan is built per call, the token grid is
    the call's, nothing leaks between calls, and detach() gives the plain pipeline back."""
    from methods import accelerate

    cell, pipe = Cell(cfg, model, "none"), pipes[model]
    guidance = cell.model_cfg["guidance_scale"]

    def call():
        return cell.adapter.sample(pipe, _conds(model), [21, 22], num_steps=4, guidance_scale=guidance).numpy()

    plain = call()
    settings = {k: v for k, v in cfg["methods"][f"{model}_toca"].items() if k != "method"}
    handle = accelerate(pipe, "toca", guidance_scale=guidance, **settings)
    try:
        first, second = call(), call()
    finally:
        handle.detach()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, plain)
    np.testing.assert_array_equal(call(), plain)
