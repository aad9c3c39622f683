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
        assert model.get("reference") in ("coco2017_val", "imagenet_adm", "heldout", "vbench", "none")


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


def test_schema_leaves_method_settings_to_the_dataclasses():
    """A variant's settings are declared once, by its method's Config (checked by check_methods): the
    schema's method part names only `method` (and the workflow's `match` block, which check_methods checks
    too) and lets the rest through."""
    method = SCHEMA["$defs"]["method"]
    assert set(method["properties"]) == {"method", "match"} and "allOf" not in method
    assert method.get("additionalProperties", True) is True


def _settings_classes():
    from methods.diffsparse.train_settings import SearchSettings, TrainSettings
    from methods.registry import METHODS
    from methods.toca import TokenCacheConfig

    return {**{name: cls.Config for name, cls in METHODS.items()},
            "diffsparse.toca": TokenCacheConfig, "diffsparse.train": TrainSettings,
            "diffsparse.search": SearchSettings}


@pytest.mark.parametrize("name", list(_settings_classes()))
def test_every_setting_is_documented_in_its_dataclass(name):
    """The descriptions that lived in the schema live in the dataclass docstrings, one entry per field."""
    import dataclasses
    import re

    cls = _settings_classes()[name]
    doc = " ".join((cls.__doc__ or "").split())
    for f in dataclasses.fields(cls):
        assert re.search(rf"\b{f.name}\b", doc), f"{name}: {f.name} is not described in {cls.__qualname__}'s docstring"


def test_nested_settings_blocks_name_their_dataclass():
    import dataclasses

    from methods.diffsparse.method import DiffSparse
    from methods.diffsparse.train_settings import SearchSettings, TrainSettings
    from methods.toca import TokenCacheConfig

    nested = {f.name: f.metadata.get("settings") for f in dataclasses.fields(DiffSparse.Config)}
    assert nested["toca"] is TokenCacheConfig
    assert nested["train"] is TrainSettings and nested["search"] is SearchSettings


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


def _diffsparse(**settings):
    """A diffsparse variant (defined, run on no model: every defined variant is checked)."""
    def mutate(c):
        c["methods"]["diffsparse_r43"] = {"method": "diffsparse", "ratio": 0.43, **settings}
    return mutate


def _fora_interval(value):
    def mutate(c):
        c["methods"]["fora_n2"]["interval"] = value
    return mutate


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
                      ["invalid config at methods.steps_50.ratio: must be in (0, 1], got 1.5"]),
    "ratio_negative": (_ratio(-0.1),
                       ["invalid config at methods.steps_50.ratio:", "-0.1"],
                       ["invalid config at methods.steps_50.ratio:", "-0.1"]),
    "nested_wrong_type": (_diffsparse(toca={"staleness_weight": "0.25"}),
                          ["invalid config at methods.diffsparse_r43.toca.staleness_weight: "
                           "must be a number, got '0.25'"],
                          ["methods.diffsparse_r43.toca.staleness_weight: must be a number, got '0.25'"]),
    "nested_unknown_key": (_diffsparse(train={"lr": 0.1}),
                           ["invalid config at methods.diffsparse_r43.train: unknown setting(s) ['lr']",
                            "valid: ['batch_size'", "'lr_layer'"],
                           ["methods.diffsparse_r43.train: unknown setting(s) ['lr']"]),
    "nested_out_of_range": (_diffsparse(search={"mutation": 2}),
                            ["invalid config at methods.diffsparse_r43.search.mutation: must be in [0, 1], got 2"],
                            ["methods.diffsparse_r43.search.mutation"]),
    "unknown_key": (lambda c: c["methods"]["toca"].update(schedule="x.safetensors"),
                    ["invalid config at methods.toca: unknown setting(s) ['schedule']", "'staleness_weight'"],
                    ["methods.toca: unknown setting(s) ['schedule']"]),
    "interval_float": (_fora_interval(2.5),
                       ["invalid config at methods.fora_n2.interval: must be an integer, got 2.5"],
                       ["methods.fora_n2.interval: must be an integer, got 2.5"]),
    "interval_string": (_fora_interval("3"),
                        ["invalid config at methods.fora_n2.interval: must be an integer, got '3'"],
                        ["methods.fora_n2.interval: must be an integer, got '3'"]),
    "flag_not_bool": (lambda c: c["methods"]["toca"].update(faithful_quirk="yes please"),
                      ["invalid config at methods.toca.faithful_quirk: must be true or false, got 'yes please'"],
                      ["methods.toca.faithful_quirk: must be true or false"]),
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


# Through Snakemake too, but not every settings case (each run imports torch): these add only another type.
_DSBENCH_ONLY = {"interval_float", "flag_not_bool", "nested_out_of_range"}


@pytest.mark.parametrize("case", [c for c in BAD if c not in _DSBENCH_ONLY])
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
# settings dataclasses -> methods.settings.build


def test_settings_types_follow_the_annotations():
    from methods.diffsparse.train_settings import TrainSettings
    from methods.settings import SettingsError, build
    from methods.toca import TokenCacheConfig

    assert build(TokenCacheConfig, {"staleness_weight": 1, "grid": 2}, "t").staleness_weight == 1  # float takes int
    assert build(TrainSettings, {"full_steps": None}, "t").full_steps is None                      # int | None
    assert build(TrainSettings, {"full_steps": 3}, "t").full_steps == 3
    for cls, key, value, problem in [
        (TokenCacheConfig, "grid", True, "must be an integer, got True"),          # bool is no int
        (TokenCacheConfig, "grid", 2.0, "must be an integer, got 2.0"),
        (TokenCacheConfig, "bonus", False, "must be a number, got False"),
        (TokenCacheConfig, "faithful_quirk", 1, "must be true or false, got 1"),
        (TokenCacheConfig, "score", 3, "must be a string, got 3"),
        (TrainSettings, "full_steps", "all", "must be an integer or null, got 'all'"),
    ]:
        with pytest.raises(SettingsError) as info:
            build(cls, {key: value}, "methods.v.block")
        assert str(info.value) == f"methods.v.block.{key} {problem}"
    with pytest.raises(SettingsError, match=r"^methods.v.toca.threshold must be an integer >= 1, got 0$"):
        build(TokenCacheConfig, {"threshold": 0}, "methods.v.toca")     # __post_init__'s check, re-rooted


def test_method_api_names_the_method_and_nested_key():
    from methods import make_method

    with pytest.raises(ValueError, match=r"^diffsparse.toca.staleness_weight must be a number, got '0.25'$"):
        make_method("diffsparse", toca={"staleness_weight": "0.25"})
    with pytest.raises(ValueError, match=r"^diffsparse.search: unknown setting\(s\) \['elite'\]; valid: \["):
        make_method("diffsparse", search={"elite": 2})
    m = make_method("diffsparse", toca={"threshold": 4}, train={"samples": 16})
    assert m.toca.threshold == 4 and m.settings.samples == 16 and m.config.toca == {"threshold": 4}


# ---------------------------------------------------------------------------------------------
# strict YAML: duplicate keys and tags, in dsbench and in Snakemake


def _tiny_text() -> str:
    return (ROOT / "tests" / "tiny.yaml").read_text()


def _line_of(text: str, prefix: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(prefix))


def _with_duplicate_model(text: str) -> str:
    """tiny.yaml with a second `tiny_pixart:` block under models (a copy, steps changed)."""
    lines = text.splitlines(keepends=True)
    start = _line_of(text, "  tiny_pixart:") - 1
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    block = "".join(lines[start:end]).replace("steps: ", "steps: 1  # was ")
    return "".join(lines[:end]) + block + "".join(lines[end:])


def test_load_refuses_a_duplicate_model_naming_file_key_and_lines(tmp_path):
    text = _with_duplicate_model(_tiny_text())
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    first = _line_of(text, "  tiny_pixart:")
    second = _line_of("\n".join(text.splitlines()[first:]), "  tiny_pixart:") + first
    with pytest.raises(dsconfig.ConfigError) as info:
        dsconfig.load(bad)
    msg = str(info.value)
    assert msg == (f"{bad}: duplicate key 'tiny_pixart' in models: line {first} and line {second} "
                   "(the second would silently replace the first)")


def test_load_refuses_a_duplicate_variant_and_nested_key(tmp_path):
    text = _tiny_text()
    line = _line_of(text, "  toca: {method: toca")
    bad = tmp_path / "dup_variant.yaml"
    bad.write_text(text.replace("  duca: {method: duca", "  toca: {method: toca, fresh_ratio: 0.5}\n  duca: {method: duca"))
    with pytest.raises(dsconfig.ConfigError, match=rf"dup_variant.yaml: duplicate key 'toca' in methods: line {line} "
                                                    rf"and line {line + 1} "):
        dsconfig.load(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("a:\n  - {x: 1, y: 2, x: 3}\n")
    with pytest.raises(dsconfig.ConfigError, match=r"duplicate key 'x' in a.0: line 2, column 6 and line 2, column 18"):
        dsconfig.load_yaml(nested)
    js = tmp_path / "dup.json"
    js.write_text('{"seed": 1, "seed": 2}')
    with pytest.raises(dsconfig.ConfigError, match=r"dup.json: duplicate key 'seed'"):
        dsconfig.load(js)


def test_yaml_merge_keys_are_no_duplicates(tmp_path):
    f = tmp_path / "merge.yaml"
    f.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert dsconfig.load_yaml(f) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


def test_load_refuses_a_python_tag_in_one_line_and_constructs_nothing(tmp_path):
    marker = tmp_path / "ran"
    text = _tiny_text().replace("seed: ", f'seed: !!python/object/apply:os.system ["touch {marker}"] #', 1)
    bad = tmp_path / "tag.yaml"
    bad.write_text(text)
    with pytest.raises(dsconfig.ConfigError) as info:
        dsconfig.load(bad)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad}, line {_line_of(text, 'seed:')}, column 7: tag '!!python/object/apply:os.system' "
                          "is not allowed")
    assert not marker.exists()


def test_syntax_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("seed: [1\nshard_size: 2\n")
    with pytest.raises(dsconfig.ConfigError) as info:
        dsconfig.load(bad)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{bad}, line 2")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in [
    *ROOT.glob("profiles/*/profile.yaml"), *ROOT.glob("configs/*.yaml"), ROOT / "config.yaml",
    ROOT / "tests" / "smoke.yaml", ROOT / "tests" / "tiny.yaml", ROOT / "workflow" / "schemas" / "config.schema.yaml"]))
def test_shipped_yaml_reads_strictly(path):
    """No shipped YAML repeats a key or uses a tag; the experiment configs also validate in full."""
    data = dsconfig.load_yaml(ROOT / path)
    assert isinstance(data, dict) and data
    if path == "config.yaml" or path.startswith(("configs/", "tests/")):
        dsconfig.load(ROOT / path)


def test_snakemake_refuses_a_duplicate_key_in_a_configfile(tmp_path, snakemake):
    text = _with_duplicate_model(_tiny_text())
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    run = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), "--replace-workflow-config", "smoke")
    assert run.returncode != 0, run.tail()
    assert f"{bad}: duplicate key 'tiny_pixart' in models: line " in run.output, run.tail()
    assert "Job stats" not in run.output and not (tmp_path / "results").exists()


def test_snakemake_refuses_a_python_tag_in_the_workflow_config(tmp_path, snakemake):
    """The Snakefile's own `configfile: config.yaml` (read from the working directory) is read strictly
    before Snakemake's loader, whose message would only say "not valid JSON or YAML"."""
    marker = tmp_path / "ran"
    (tmp_path / "config.yaml").write_text(
        _tiny_text().replace("seed: ", f'seed: !!python/object/apply:os.system ["touch {marker}"] #', 1))
    run = snakemake(tmp_path, "-n", "--cores", "1", "smoke")
    assert run.returncode != 0, run.tail()
    assert "config.yaml, line 3, column 7: tag '!!python/object/apply:os.system' is not allowed" in run.output, \
        run.tail()
    assert not marker.exists() and "Job stats" not in run.output


def test_snakemake_refuses_a_python_tag_in_a_configfile(tmp_path, snakemake):
    """A --configfile is loaded by Snakemake's command line before any workflow code runs (there is no hook
    to preempt it): refused, constructing nothing, but with Snakemake's own message."""
    marker = tmp_path / "ran"
    bad = tmp_path / "tag.yaml"
    bad.write_text(_tiny_text().replace("seed: ", f'seed: !!python/object/apply:os.system ["touch {marker}"] #', 1))
    run = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), "--replace-workflow-config", "smoke")
    assert run.returncode != 0, run.tail()
    assert not marker.exists() and "Job stats" not in run.output


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
    # Joined at run time, so that this file, checked like every other, does not name them itself.
    needles = tuple("".join(parts) for parts in (("shared/", "reference"), ("DESIGN", ".md"), ("baselines", "-spec"),
                                                  ("metrics", "-notes"), ("diffusers", "-internals")))
    hits = [f for f in files if not f.endswith((".png", ".safetensors", ".npz"))
            and any(n in (REPO / f).read_text(errors="ignore") for n in needles)]
    assert hits == []
