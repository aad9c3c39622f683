"""Shared helpers for the config and workflow tests: the repo paths and a Snakemake runner.

Snakemake always runs as a subprocess of *this* interpreter (`python -m snakemake`), with this
interpreter's bin/ first on PATH so the rules' `dsbench` verbs resolve to the same environment, in a
working directory of its own (`--directory`), with the workflow profile disabled.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG_YAML = REPO / "config.yaml"
TINY_YAML = REPO / "tests" / "tiny.yaml"


@dataclass
class Run:
    args: list[str]
    returncode: int
    output: str          # stdout and stderr, interleaved as written

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def tool_env() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's scripts (dsbench, snakemake) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def snakemake_cmd(workdir: Path, *args: str, workflow_profile: str | Path | None = "none") -> list[str]:
    """`python -m snakemake -s <repo>/Snakefile --directory <workdir> --workflow-profile <p> <args>`;
    `workflow_profile=None` leaves Snakemake to find profiles/default itself."""
    profile = [] if workflow_profile is None else ["--workflow-profile", str(workflow_profile)]
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *profile, *args]


def run_snakemake(workdir: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Run:
    """:func:`snakemake_cmd` with the workflow profile disabled, `env` over the tool environment."""
    cmd = snakemake_cmd(workdir, *args)
    p = subprocess.run(cmd, cwd=workdir, env=tool_env() | (env or {}), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return Run(cmd, p.returncode, p.stdout)


def run_dsbench(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `dsbench` console script of this environment (the entry point users and rules call)."""
    exe = Path(sys.executable).parent / "dsbench"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from dsbench.cli import main; "
                                                                  "sys.exit(main())"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def snakemake():
    """`snakemake(workdir, *args, timeout=...) -> Run`: see :func:`run_snakemake`."""
    return run_snakemake


@pytest.fixture(scope="session")
def dsbench_cli():
    """`dsbench_cli(*args, cwd=REPO) -> CompletedProcess`: see :func:`run_dsbench`."""
    return run_dsbench


@pytest.fixture
def tiny_yaml() -> dict:
    """A fresh deep copy of tests/tiny.yaml as loaded by yaml (not validated, no defaults filled)."""
    return copy.deepcopy(yaml.safe_load(TINY_YAML.read_text()))


def pytest_collection_modifyitems(session, config, items):
    """The smoke DAG's tests first: under `make test` (pytest-xdist, whole files per worker) the longest
    module then starts at once and the rest of the suite runs beside it on the other worker."""
    items.sort(key=lambda item: "smoke_run" not in getattr(item, "fixturenames", ()))


# A three-method cut of the tiny matrix (the baseline, a step-parallel cache, a token cache; two shards
# each): the DAG that runs for real once per session, for the rerun-scope table (tests/test_rerun_scope.py)
# and as the local executor's side of the SLURM comparison (tests/test_slurm.py).
TINY_CUT_METHODS = ["none", "fora_n2", "toca"]


def tiny_cut_config() -> dict:
    cfg = yaml.safe_load(TINY_YAML.read_text())
    cfg["models"]["tiny_pixart"]["methods"] = list(TINY_CUT_METHODS)
    cfg["methods"] = {k: v for k, v in cfg["methods"].items() if k in TINY_CUT_METHODS}
    table = cfg["tables"]["table1"]
    table["rows"] = [r for r in table["rows"] if r["method"] in TINY_CUT_METHODS]
    return cfg


@pytest.fixture(scope="session")
def tiny_cut_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_cut") / "tiny_cut.yaml"
    path.write_text(yaml.safe_dump(tiny_cut_config(), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_cut_run(tmp_path_factory, tiny_cut_yaml) -> Path:
    """The cut's whole DAG (`all`) run once with the local executor; its working directory."""
    work = tmp_path_factory.mktemp("tiny_cut_run")
    run = run_snakemake(work, "--cores", "2", "--configfile", str(tiny_cut_yaml), "--replace-workflow-config",
                        "all", timeout=1800)
    assert run.returncode == 0, run.tail(120)
    return work
