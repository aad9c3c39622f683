"""The experiment matrix: schema <-> registries, every error naming the key at fault, in
`dsbench.config`, in Snakemake (which validates with the same schema before building any job) and in
the `dsbench` CLI."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from dsbench import config as dsconfig

ROOT = Path(__file__).resolve().parents[1]
# The index a row appended to the tiny table gets.
_NEW_ROW = len(yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())["tables"]["table1"]["rows"])
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# the shipped configs


@pytest.mark.parametrize("name", ["config.yaml", "tests/tiny.yaml", "configs/table10.yaml"])
def test_shipped_config_validates(name):
    cfg = dsconfig.load(ROOT / name)
    assert cfg["models"] and cfg["methods"] and cfg["tables"]
    # schema defaults are filled in
    assert cfg["metrics"]["fid_mode"] == "clean"
    assert "fidelity_samples" in cfg
    for model in cfg["models"].values():
        assert "none" in model["methods"]
        assert model.get("reference") in ("coco2017_val", "imagenet_adm", "heldout", "vbench")


@pytest.mark.parametrize("name", ["config.yaml", "tests/tiny.yaml"])
def test_restricted_cell_config_round_trips(name):
    """Every rule receives `restrict(config, model)` as inline JSON; it must load by itself."""
    cfg = dsconfig.load(ROOT / name)
    for model in cfg["models"]:
        cell = dsconfig.load_arg(json.dumps(dsconfig.restrict(cfg, model), sort_keys=True))
        assert list(cell["models"]) == [model]
        assert sorted(cell["methods"]) == sorted(cfg["models"][model]["methods"])
        for variant in cfg["models"][model]["methods"]:       # one cell's jobs: its variant and `none`
            one = dsconfig.load_arg(json.dumps(dsconfig.restrict(cfg, model, variant), sort_keys=True))
            assert set(one["methods"]) == {"none", variant} and one["methods"][variant] == cfg["methods"][variant]


def test_load_missing_file_names_the_path(tmp_path):
    with pytest.raises(dsconfig.ConfigError, match="config file not found: .*nope.yaml"):
        dsconfig.load(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# schema enums == registries


def test_schema_model_enum_matches_registry():
    from models.registry import MODELS

    enum = SCHEMA["properties"]["models"]["propertyNames"]["enum"]
    assert len(enum) == len(set(enum)), f"duplicate names in the schema's model enum: {enum}"
    # Compared as sorted lists: the schema lists them in registry order, not alphabetically.
    assert sorted(enum) == sorted(MODELS)


def test_schema_method_enum_matches_registry():
    from methods.registry import METHODS

    enum = SCHEMA["$defs"]["method"]["properties"]["method"]["enum"]
    assert len(enum) == len(set(enum)), f"duplicate names in the schema's method enum: {enum}"
    assert sorted(enum) == sorted(METHODS)
    # Each registered method has its settings branch (if method == X then ...): a method without
    # one would accept any settings unchecked.
    import dataclasses

    settings = {}
    for b in SCHEMA["$defs"]["method"]["allOf"]:
        cond = b["if"]["properties"]["method"]
        for name in cond.get("enum", [cond.get("const")]):
            settings[name] = set(b["then"].get("properties", {})) - {"method"}
    assert set(settings) == set(METHODS)
    # ... and the schema's settings are exactly the method's config fields.
    for name, cls in METHODS.items():
        assert settings[name] == {f.name for f in dataclasses.fields(cls.Config)}, name


# ---------------------------------------------------------------------------------------------
# bad configs: one mutation of tests/tiny.yaml each


def _unknown_model(c):
    c["models"] = {"tiny_foo": c["models"].pop("tiny_pixart")}
    c["tables"]["table1"]["model"] = "tiny_foo"


def _unknown_method(c):
    c["methods"]["x"] = {"method": "nosuch"}


def _ratio(value):
    def mutate(c):
        c["methods"]["steps_50"]["ratio"] = value
    return mutate


def _steps_zero(c):
    c["models"]["tiny_pixart"]["steps"] = 0


def _no_guidance(c):
    del c["models"]["tiny_pixart"]["guidance_scale"]


def _no_seed(c):
    del c["seed"]


def _undefined_variant(c):
    c["models"]["tiny_pixart"]["methods"].append("steps_25")


def _row_not_run(c):
    c["methods"]["steps_25"] = {"method": "steps", "ratio": 0.25}   # defined, but not run on the model
    c["tables"]["table1"]["rows"].append({"method": "steps_25", "label": "25% steps"})


# id -> (mutation, substrings of the ConfigError message, substrings of Snakemake's output)
BAD = {
    "unknown_model": (_unknown_model,
                      ["invalid config at models:", "'tiny_foo' is not one of"],
                      ["'tiny_foo' is not one of"]),
    "unknown_method": (_unknown_method,
                       ["invalid config at methods.x.method:", "'nosuch' is not one of"],
                       ["'nosuch' is not one of", "['methods']['x']['method']"]),
    "ratio_above_1": (_ratio(1.5),
                      ["invalid config at methods.steps_50.ratio:", "1.5"],
                      ["['methods']['steps_50']['ratio']", "1.5"]),
    "ratio_negative": (_ratio(-0.1),
                       ["invalid config at methods.steps_50.ratio:", "-0.1"],
                       ["['methods']['steps_50']['ratio']", "-0.1"]),
    "steps_zero": (_steps_zero,
                   ["invalid config at models.tiny_pixart.steps:", "0 is less than the minimum of 1"],
                   ["['models']['tiny_pixart']['steps']", "0 is less than the minimum of 1"]),
    "missing_guidance_scale": (_no_guidance,
                               ["invalid config at models.tiny_pixart:",
                                "'guidance_scale' is a required property"],
                               ["'guidance_scale' is a required property", "['models']['tiny_pixart']"]),
    "missing_seed": (_no_seed,
                     ["'seed' is a required property"],
                     ["'seed' is a required property"]),
    "undefined_method_variant": (_undefined_variant,
                                 ["invalid config at models.tiny_pixart.methods:",
                                  "unknown method variant 'steps_25'"],
                                 ["models.tiny_pixart.methods", "unknown method variant 'steps_25'"]),
    "table_row_not_run": (_row_not_run,
                          [f"invalid config at tables.table1.rows.{_NEW_ROW}.method:",
                           "'steps_25' is not run on tiny_pixart"],
                          [f"tables.table1.rows.{_NEW_ROW}.method", "'steps_25' is not run on tiny_pixart"]),
}


def _bad_config(tiny_yaml, case):
    cfg = copy.deepcopy(tiny_yaml)
    BAD[case][0](cfg)
    return cfg


def test_tiny_config_unmutated_is_valid(tiny_yaml):
    """The baseline of the bad-config cases: each failure below comes from its mutation alone."""
    dsconfig.validate(copy.deepcopy(tiny_yaml))


@pytest.mark.parametrize("case", list(BAD))
def test_validate_names_the_key(tiny_yaml, case):
    with pytest.raises(dsconfig.ConfigError) as info:
        dsconfig.validate(_bad_config(tiny_yaml, case))
    msg = str(info.value)
    for part in BAD[case][1]:
        assert part in msg, f"{part!r} not in {msg!r}"


@pytest.mark.parametrize("case", list(BAD))
def test_snakemake_rejects_bad_config(tiny_yaml, case, tmp_path, snakemake):
    bad = tmp_path / f"{case}.yaml"
    bad.write_text(yaml.safe_dump(_bad_config(tiny_yaml, case), allow_unicode=True, sort_keys=False))
    run = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), "--replace-workflow-config",
                    "smoke")
    assert run.returncode != 0, run.tail()
    # refused as a config error before any job was planned, naming the key and value at fault
    assert "Error validating config file" in run.output or "invalid config at" in run.output, run.tail()
    for part in BAD[case][2]:
        assert part in run.output, f"{part!r} not in Snakemake's output:\n{run.tail()}"
    assert "Job stats" not in run.output
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------------------------------
# the dsbench CLI


def test_cli_macs_unknown_model(dsbench_cli):
    p = dsbench_cli("macs", "--config", "tests/tiny.yaml", "--model", "nosuch", "--method", "none")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "dsbench macs: error:" in p.stderr
    assert "unknown model 'nosuch'" in p.stderr
    assert "tiny_pixart" in p.stderr            # says which models are configured
    assert "Traceback" not in p.stderr


def test_cli_macs_unknown_method(dsbench_cli):
    p = dsbench_cli("macs", "--config", "tests/tiny.yaml", "--model", "tiny_pixart", "--method", "nosuch")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "dsbench macs: error:" in p.stderr
    assert "'nosuch'" in p.stderr and "methods.nosuch.method" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_bad_config_file_names_the_key(dsbench_cli, tiny_yaml, tmp_path):
    tiny_yaml["methods"]["steps_50"]["ratio"] = 1.5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_yaml, allow_unicode=True))
    p = dsbench_cli("macs", "--config", str(bad), "--model", "tiny_pixart", "--method", "none")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "invalid config at methods.steps_50.ratio" in p.stderr


def test_a_model_may_set_its_own_dtype_and_batch_size():
    import torch

    from dsbench.cell import Cell
    from tests.util import tiny_config

    cfg = tiny_config(model={"dtype": "bfloat16", "batch_size": 3})
    cell = Cell(cfg, "tiny_pixart", "none")
    assert cell.batch_size == 3 and cfg["batch_size"] != 3
    assert cell.build_pipeline().transformer.dtype == torch.bfloat16
    plain = Cell(tiny_config(), "tiny_pixart", "none")
    assert plain.batch_size == plain.config["batch_size"]
    with pytest.raises(dsconfig.ConfigError, match="dtype"):
        tiny_config(model={"dtype": "float8"})


@pytest.mark.parametrize("model", ["mid_pixart", "tiny_wan", "wan21_t2v_1_3b", "dit_xl_2_256"])
def test_engine_speed_benchmark_builds_a_valid_config_for_each_family(model):
    import importlib.util

    spec = importlib.util.spec_from_file_location("engine_speed", ROOT / "benchmarks" / "engine_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.bench_config(20, 1, 3, model, "cuda")
    entry = cfg["models"][model]
    assert entry["source"] == ("tiny" if model in ("mid_pixart", "tiny_wan") else "random")
    assert entry["methods"] == bench.METHODS


def test_no_file_cites_notes_users_do_not_have():
    """Code, configs and docs explain themselves: none points at the developers' private notes."""
    import subprocess

    from tests.util import REPO

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needles = ("shared/reference", "DESIGN.md", "baselines-spec", "metrics-notes", "diffusers-internals")
    hits = [f for f in files if not f.endswith((".png", ".safetensors", ".npz"))
            and f != "tests/test_config.py"
            and any(n in (REPO / f).read_text(errors="ignore") for n in needles)]
    assert hits == []
