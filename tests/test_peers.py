"""The peers' caches as rows: each row's images are the library's own output for the same pipeline call (we
attach, we don't reimplement), consecutive calls leak no state, refusals name their reason, MACs are
counted from the run, and MagCache's calibration is the library's own."""
from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

from dsbench.cell import Cell
from tests.util import tiny_config, with_dit, with_wan

PEERS = {
    "fbc": {"method": "diffusers_fbc", "threshold": 0.3},
    "tsc": {"method": "diffusers_taylorseer", "cache_interval": 2, "disable_cache_before_step": 2, "max_order": 2,
            "taylor_factors_dtype": None},
    "mag": {"method": "diffusers_magcache", "threshold": 0.5, "retention_ratio": 0.2,
            "mag_ratios": [1.0, 0.98, 0.97, 0.96, 0.95, 0.95, 0.94, 0.9]},
    "fc": {"method": "diffusers_fastercache", "spatial_attention_timestep_skip_range": [-1, 1000]},
    "pab": {"method": "diffusers_pab", "spatial_attention_block_skip_range": 2,
            "spatial_attention_timestep_skip_range": [-1, 1000]},
    "db": {"method": "cachedit_dbcache", "Fn_compute_blocks": 1, "residual_diff_threshold": 0.3, "max_warmup_steps": 2},
}


def _config(model: str = "tiny_pixart"):
    cfg = tiny_config()
    if model == "tiny_dit":
        cfg = with_dit(cfg, steps=8)
    if model == "tiny_wan":
        cfg = with_wan(cfg, steps=8)
    cfg = copy.deepcopy(cfg)
    cfg["methods"].update(PEERS)
    cfg["models"][model]["methods"] = ["none", *PEERS, "taylorseer_n2"]
    return cfg


def _conditions(cell, n=2):
    return cell.conditions()[:n]


def _row_images(cfg, model, variant, calls=1):
    cell = Cell(cfg, model, variant)
    cell.check_ready()
    pipe = cell.build_pipeline()
    conds = _conditions(cell)
    with cell.accelerated(pipe) as run:
        return [cell.sample(pipe, run, conds, [0, 1]) for _ in range(calls)], cell, pipe


def _library_images(cell, pipe, variant):
    """The same pipeline call with the library's cache installed by its own public entry point and nothing of
    ours around it (PixArt/DiT: the one cache context set by diffusers' own function, as CacheMixin does)."""
    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    method = cell.accelerator
    conds, steps, g = _conditions(cell), cell.num_steps, cell.model_cfg["guidance_scale"]
    transformer = pipe.transformer
    if method.library == "cache-dit":
        import cache_dit

        c = method.config
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=c.Fn_compute_blocks, Bn_compute_blocks=c.Bn_compute_blocks,
            residual_diff_threshold=c.residual_diff_threshold, max_warmup_steps=c.max_warmup_steps,
            num_inference_steps=steps))
        with torch.inference_mode():  # one image a call, as the row samples
            return torch.cat([cell.adapter.sample(pipe, [cond], [s], num_steps=steps, guidance_scale=g)
                              for cond, s in zip(conds, [0, 1])])
    t = {"now": None}
    config = method.hook_config(lambda: int(t["now"].flatten()[0]), cell.adapter, steps, g)
    getattr(hooks, method.apply)(transformer, config)
    transformer.register_forward_pre_hook(lambda m, a, k: t.__setitem__("now", k["timestep"]), with_kwargs=True)

    def call(cs, ss):  # each call starts clean, as CacheMixin._reset_stateful_cache does
        hooks.HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)
        _set_cache_context(transformer, CacheContext("cond"))
        with torch.inference_mode():
            return cell.adapter.sample(pipe, cs, ss, num_steps=steps, guidance_scale=g)
    if method.per_image:
        return torch.cat([call([cond], [s]) for cond, s in zip(conds, [0, 1])])
    return call(conds, [0, 1])


@pytest.mark.parametrize("variant", list(PEERS))
def test_peer_row_equals_the_library_and_leaks_nothing(variant):
    cfg = _config()
    (first, second), cell, _ = _row_images(cfg, "tiny_pixart", variant, calls=2)
    assert torch.equal(first, second), f"{variant}: the second call differs from the first (state leaked)"
    fresh = Cell(cfg, "tiny_pixart", variant).build_pipeline()
    assert torch.equal(first, _library_images(cell, fresh, variant))
    plain, _, _ = _row_images(cfg, "tiny_pixart", "none")
    assert not torch.equal(first, plain[0]), f"{variant} reused nothing: its settings hook no module"


def test_peer_rows_on_wan_equal_the_library():
    """Wan's pipeline opens the cache contexts itself (cond / uncond calls): the row adds none of its own."""
    cfg = _config("tiny_wan")
    for variant in ("fbc", "mag", "db"):
        (first, second), cell, _ = _row_images(cfg, "tiny_wan", variant, calls=2)
        assert torch.equal(first, second), variant
        if variant != "db":
            fresh = Cell(cfg, "tiny_wan", variant).build_pipeline()
            from diffusers import hooks

            m = cell.accelerator
            getattr(hooks, m.apply)(fresh.transformer, m.hook_config(None, cell.adapter, cell.num_steps, 5.0))
            hooks.HookRegistry.check_if_exists_or_initialize(fresh.transformer).invalidate_child_registries_cache()
            with torch.inference_mode():
                conds = _conditions(cell)
                ref = torch.cat([cell.adapter.sample(fresh, [c], [s], num_steps=cell.num_steps, guidance_scale=5.0)
                                 for c, s in zip(conds, [0, 1])]) if m.per_image else \
                    cell.adapter.sample(fresh, conds, [0, 1], num_steps=cell.num_steps, guidance_scale=5.0)
            assert torch.equal(first, ref), variant


def test_detach_restores_the_plain_model():
    cfg = _config()
    plain, _, _ = _row_images(cfg, "tiny_pixart", "none")
    for variant in ("fbc", "tsc", "db"):
        cell = Cell(cfg, "tiny_pixart", variant)
        pipe = cell.build_pipeline()
        with cell.accelerated(pipe) as run:
            cell.sample(pipe, run, _conditions(cell), [0, 1])
        none = Cell(cfg, "tiny_pixart", "none")
        with none.accelerated(pipe) as engine:
            after = none.sample(pipe, engine, _conditions(cell), [0, 1])
        assert torch.equal(after, plain[0]), variant


def test_diffusers_taylorseer_pointed_at_our_sublayers_equals_our_taylorseer():
    cfg = _config()
    cfg["models"]["tiny_pixart"]["steps"] = 10
    ours, _, _ = _row_images(cfg, "tiny_pixart", "taylorseer_n2")  # interval 2, order 2, first_enhance 2
    peer, cell, pipe = _row_images(cfg, "tiny_pixart", "tsc")
    assert torch.equal(ours[0], peer[0])
    hooked = {n for n, m in pipe.transformer.named_modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks}
    assert hooked == set(), "detach left hooks behind"


def test_fastercache_is_refused_on_dit_and_the_library_fails_there():
    from methods.peers import PeerUnsupported

    cfg = _config("tiny_dit")
    cell = Cell(cfg, "tiny_dit", "fc")
    with pytest.raises(PeerUnsupported, match="does not run on dit models: its hook splits the batch"):
        cell.check_ready()
    # The reason holds: the library's own hook on DiT fails on the CFG split.
    from diffusers import hooks

    pipe = cell.build_pipeline()
    t = {}
    m = cell.accelerator
    hooks.apply_faster_cache(pipe.transformer, m.hook_config(lambda: int(t["now"].flatten()[0]), cell.adapter, 8, 1.5))
    pipe.transformer.register_forward_pre_hook(lambda mod, a, k: t.__setitem__("now", k["timestep"]), with_kwargs=True)
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(pipe.transformer, CacheContext("cond"))
    with pytest.raises(RuntimeError, match="size of tensor"), torch.inference_mode():
        cell.adapter.sample(pipe, [1, 2], [0, 1], num_steps=8, guidance_scale=1.5)


def test_dbcache_refuses_a_compute_depth_at_or_over_the_model():
    cfg = _config()
    cfg["methods"]["db"] = {**PEERS["db"], "Fn_compute_blocks": 3, "Bn_compute_blocks": 1}  # tiny PixArt: 4 blocks
    cell = Cell(cfg, "tiny_pixart", "db")
    with pytest.raises(ValueError, match=r"Fn_compute_blocks \+ Bn_compute_blocks \(3 \+ 1\) must be below the "
                                         r"model's 4 blocks"):
        with cell.accelerated(cell.build_pipeline()):
            pass


def test_cache_dit_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cache_dit", None)
    cell = Cell(_config(), "tiny_pixart", "db")
    with pytest.raises(ImportError, match=r'optional extra: pip install -e "\.\[peers\]"'):
        cell.check_ready()


def test_peer_settings_are_checked():
    from methods import make_method
    from methods.settings import SettingsError

    with pytest.raises(SettingsError, match="unknown setting"):
        make_method("diffusers_fbc", threshhold=0.1)
    with pytest.raises(SettingsError, match="diffusers_pab.spatial_attention_block_skip_range or cross"):
        make_method("diffusers_pab")
    with pytest.raises(SettingsError, match=r"timestep_skip_range must be two integer timesteps"):
        make_method("diffusers_fastercache", spatial_attention_timestep_skip_range=[900, 100])
    with pytest.raises(SettingsError, match="taylor_factors_dtype must be one of"):
        make_method("diffusers_taylorseer", taylor_factors_dtype="fp8")


def test_peer_macs_are_counted_from_the_run():
    """A FirstBlockCache that never skips (threshold 0) counts the plain model's MACs and every block each
    call; one that skips counts fewer, consistently with its blocks per call."""
    from dsbench.measure import count_macs

    cfg = _config()
    cfg["methods"]["fbc0"] = {"method": "diffusers_fbc", "threshold": 0.0}
    cfg["models"]["tiny_pixart"]["methods"].append("fbc0")
    cfg["device"] = "cpu"
    none = count_macs(Cell(cfg, "tiny_pixart", "none"), "cpu", images=2)
    never = count_macs(Cell(cfg, "tiny_pixart", "fbc0"), "cpu", images=2)
    assert never["macs_c1"] == pytest.approx(none["macs_c1"], rel=1e-9)
    assert never["blocks_computed_per_call"] == pytest.approx(4.0, rel=1e-9)  # tiny PixArt's 4 blocks
    skips = count_macs(Cell(cfg, "tiny_pixart", "fbc"), "cpu", images=2)
    assert 1.0 <= skips["blocks_computed_per_call"] < 4.0  # the first block always runs
    assert skips["macs_c1"] < none["macs_c1"]
    # A peer that samples the whole batch per call: its blocks are weighed against a plain call of that batch
    # (3 images: more than the config's batch_size of 2, which the count's one call does not split by).
    cfg["methods"]["ts_never"] = {"method": "diffusers_taylorseer", "cache_interval": 1}
    cfg["models"]["tiny_pixart"]["methods"].append("ts_never")
    assert Cell(cfg, "tiny_pixart", "ts_never").batch_size == 2
    batched = count_macs(Cell(cfg, "tiny_pixart", "ts_never"), "cpu", images=3)
    assert batched["macs_c1"] == pytest.approx(none["macs_c1"], rel=1e-9)
    assert batched["blocks_computed_per_call"] == pytest.approx(4.0, rel=1e-9)
    db = count_macs(Cell(cfg, "tiny_pixart", "db"), "cpu", images=2)
    summary = db["cache_dit_summary"][0]
    assert summary["accumulated_executed_steps"] == 8
    with pytest.raises(ValueError, match="peer cache decides on the values it sees"):
        count_macs(Cell(cfg, "tiny_pixart", "fbc"), "meta")


def test_macs_verb_counts_a_peer_on_a_real_run(tmp_path, capsys):
    """`dsbench macs --device auto` (rule macs) counts a peer on real runs and says what it decided."""
    import json

    from dsbench.cli import main

    cfg = _config()
    cfg["device"], cfg["tables"] = "cpu", {}   # _config's model runs the peers, not the tables' rows
    out = tmp_path / "fbc.json"
    assert main(["macs", "--config", json.dumps(cfg), "--model", "tiny_pixart", "--method", "fbc",
                 "--device", "auto", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["plan_full_steps"] is None
    printed = capsys.readouterr().out
    assert f"{result['blocks_computed_per_call']:.2f} of 4 blocks computed per call" in printed


def test_parse_ratios_reads_the_printed_lists():
    from dsbench.peer_calibration import parse_ratios

    text = "x\n[MagCache] Calibration Complete. Copy these values:\n[1.0, 0.5]\n\n" \
           "[MagCache] Calibration Complete. Copy these values:\n[1.0, 0.7]\n"
    assert parse_ratios(text, 2) == [1.0, 0.6]
    with pytest.raises(RuntimeError, match="not 3 ratios"):
        parse_ratios(text, 3)
    with pytest.raises(RuntimeError, match="printed no calibration"):
        parse_ratios("nothing", 2)


def test_magcache_calibrates_then_samples_and_refuses_stale_or_missing(tmp_path, monkeypatch):
    from dsbench.peer_calibration import calibrate_cell

    monkeypatch.chdir(tmp_path)
    cfg = _config()
    cfg["methods"]["magc"] = {"method": "diffusers_magcache", "calibration_samples": 2}
    cfg["models"]["tiny_pixart"]["methods"].append("magc")
    cell = Cell(cfg, "tiny_pixart", "magc")
    with pytest.raises(FileNotFoundError, match=r"results/peers/tiny_pixart/magc.json is missing; make it with"):
        cell.check_ready()
    rec = calibrate_cell(cell, cell.accelerator.config.calibration)
    assert len(rec["mag_ratios"]) == 8 and rec["mag_ratios"][0] == 1.0
    assert rec["conditions"]["seeds"][0] >= 1_000_000  # never an evaluated sample's seed
    Cell(cfg, "tiny_pixart", "magc").check_ready()
    with pytest.raises(FileExistsError):
        calibrate_cell(cell, cell.accelerator.config.calibration)
    stale = copy.deepcopy(cfg)
    stale["models"]["tiny_pixart"]["steps"] = 6
    with pytest.raises(ValueError, match=r"was measured under other settings \(num_steps: 8 != 6\)"):
        Cell(stale, "tiny_pixart", "magc").check_ready()
    path = tmp_path / cell.accelerator.config.calibration
    path.write_text(json.dumps({"mag_ratios": "x"}))
    with pytest.raises(ValueError, match="is corrupt"):
        Cell(cfg, "tiny_pixart", "magc").check_ready()


def test_workflow_knows_which_peers_are_calibrated():
    """schedules.smk cannot import torch: its CALIBRATED set must name exactly the calibrated peers."""
    import re

    from methods.registry import METHODS
    from tests.util import REPO

    text = (REPO / "workflow" / "rules" / "schedules.smk").read_text()
    names = set(re.findall(r'"(\w+)"', re.search(r"CALIBRATED = \{([^}]*)\}", text).group(1)))
    assert names == {n for n, cls in METHODS.items() if cls.calibrated}
