"""Rerun scope (issue 16 item 5) and doctor as the run's first step (item 6).

A three-method cut of the tiny DAG runs for real once (the session fixture `tiny_cut_run`, shared with
tests/test_slurm.py); then each setting is changed in turn in a copy of its config and `snakemake -n`
says which rules would rerun: only those whose outputs depend on it (dsbench/scope.py). The table
(setting -> rules) is printed (pytest -s)."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import time

import pytest
import yaml

from dsbench import scope
from tests.conftest import CONFIG_YAML, TINY_YAML, tiny_cut_config

pytestmark = pytest.mark.slow
SMOKE_YAML = TINY_YAML.parent / "smoke.yaml"


def _stats(output: str) -> dict[str, int]:
    lines = output.splitlines()
    if "Nothing to be done" in output and "Job stats:" not in output:
        return {}
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    stats = {}
    for line in lines[start + 3:]:
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not m:
            break
        stats[m.group(1)] = int(m.group(2))
    stats.pop("total", None)
    return stats


def _set(cfg: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    d = cfg
    for p in parents:
        d = d[p]
    d[last] = value


TINY = tiny_cut_config()
# setting -> new value, and the rules expected to rerun (each with its job count)
METHODS = TINY["models"]["tiny_pixart"]["methods"]
N_SHARDS = 2
DOWNSTREAM = {"aggregate": 1, "render_table": 1, "all": 1}
SAMPLING_ALL = {"generate_shard": len(METHODS) * N_SHARDS, "reference_stats": 1, "evaluate": len(METHODS),
                "macs": len(METHODS), "latency": 1, **DOWNSTREAM}
CHANGES = {
    "seed": (1, SAMPLING_ALL),
    # shard 0 becomes samples 0-7 (shard 1 is gone); MACs and latency do not depend on the split
    "shard_size": (8, {"generate_shard": len(METHODS), "reference_stats": 1, "evaluate": len(METHODS),
                       **DOWNSTREAM}),
    "batch_size": (4, {}),
    "device": ("cpu:0", SAMPLING_ALL),
    "dtype": ("float16", SAMPLING_ALL),
    "resources": ("elsewhere", {"reference_stats": 1, "evaluate": len(METHODS), **DOWNSTREAM}),
    "fidelity_samples": (4, {"evaluate": len(METHODS), **DOWNSTREAM}),
    "metrics.clip_mode": ("correct", {"evaluate": len(METHODS), **DOWNSTREAM}),
    "latency.repeats": (5, {"latency": 1, **DOWNSTREAM}),
    "tables.table1.notes": (["changed"], {"render_table": 1, "all": 1}),
    "models.tiny_pixart.guidance_scale": (3.0, SAMPLING_ALL),
    # 8 -> 12 samples: only the new shard 2 of each variant is generated (shards 0 and 1 keep their range)
    "models.tiny_pixart.num_samples": (12, {"generate_shard": len(METHODS), "reference_stats": 1,
                                            "evaluate": len(METHODS), "macs": len(METHODS), **DOWNSTREAM}),
    "models.tiny_pixart.batch_size": (1, {"aggregate": 1, "render_table": 1, "all": 1}),  # provenance hash only
    "methods.toca.fresh_ratio": (0.5, {"generate_shard": N_SHARDS, "evaluate": 1, "macs": 1, "latency": 1,
                                       **DOWNSTREAM}),
}


def test_every_slice_loads_and_guards(tiny_yaml):
    """Each rule kind's slice validates as its verb loads it, and reading outside it is a clear error."""
    from dsbench import config as dsconfig

    cfg = dsconfig.validate(tiny_yaml)
    s = dsconfig.load_arg(scope.dumps(scope.generate_shard(cfg, "tiny_pixart", "toca", 1)))
    assert s["models"]["tiny_pixart"]["num_samples"] == 8 and list(s["methods"]) == ["toca"]
    with pytest.raises(scope.ScopeError, match=r"config\.latency is outside .*generate_shard.*scope\.py"):
        s["latency"]
    with pytest.raises(scope.ScopeError, match="models.tiny_pixart.reference"):
        s["models"]["tiny_pixart"].get("reference", "heldout")
    assert s["models"]["tiny_pixart"].get("guided_channels") is None      # in scope, just not set
    assert "batch_size" not in json.dumps(scope.trigger(scope.generate_shard(cfg, "tiny_pixart", "none", 0)))
    for kind, args in [("reference_stats", ()), ("evaluate", ("toca",)), ("macs", ("toca",)), ("latency", ()),
                       ("aggregate", ()), ("grid", ())]:
        dsconfig.load_arg(scope.dumps(getattr(scope, kind)(cfg, "tiny_pixart", *args)))
    dsconfig.load_arg(scope.dumps(scope.render(cfg, "table1")))


def test_rerun_scope_table(tiny_cut_run, tiny_cut_yaml, snakemake, tmp_path):
    up = snakemake(tiny_cut_run, "-n", "--cores", "2", "--configfile", str(tiny_cut_yaml), "--replace-workflow-config",
                   "all")
    assert "Nothing to be done" in up.output, up.tail()
    table, wrong = {}, {}
    for key, (value, expected) in CHANGES.items():
        cfg = copy.deepcopy(TINY)
        _set(cfg, key, value)
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = snakemake(tiny_cut_run, "-n", "--cores", "2", "--configfile", str(path), "--replace-workflow-config",
                        "all")
        assert run.returncode == 0, run.tail()
        table[key] = got = _stats(run.output)
        if got != expected:
            wrong[key] = (got, expected)
    print("\nsetting changed -> rules that rerun (jobs)")
    for key, got in table.items():
        print(f"  {key:<36} {', '.join(f'{r} {n}' for r, n in got.items()) or '(nothing)'}")
    assert not wrong, wrong


def test_table1_without_weights_stops_at_doctor_before_any_job(tmp_path):
    """`snakemake --cores 2 table1` with the default profile (keep-going) and no weights: doctor's list
    once, non-zero exit, nothing run; a dry run still plans."""
    import sys

    from tests.conftest import SNAKEFILE, tool_env

    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
           "--configfile", str(CONFIG_YAML), "--cores", "2", "table1"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120)
    wall = time.monotonic() - t0
    print(f"\nsnakemake --cores 2 table1 without weights: exit {p.returncode} in {wall:.1f} s")
    assert p.returncode != 0 and wall < 60, p.stdout[-3000:]
    assert p.stdout.count("files are missing; no job was started") == 1 and "[MISSING]" in p.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    dry = subprocess.run([*cmd, "-n"], cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert dry.returncode == 0 and "MISSING" not in dry.stdout, dry.stdout[-3000:]


def test_proxy_config_is_not_blocked(tmp_path, snakemake):
    target = "results/macs/proxy_dit/none.json"
    run = snakemake(tmp_path, "--cores", "2", "--configfile", str(SMOKE_YAML), "--replace-workflow-config", target,
                    timeout=600)
    assert run.returncode == 0 and "MISSING" not in run.output, run.tail()
    assert (tmp_path / target).is_file()
