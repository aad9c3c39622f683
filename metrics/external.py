"""Metrics that pin old libraries run in a virtual environment of their own, behind a JSON file boundary.

ImageReward 1.5 needs transformers<4.56 and timm 0.6.13; VBench 0.1.5 needs transformers 4.33.2, numpy<2
and timm<=1.0.12 (their own pins). Neither fits the main environment, so each gets
``<envs_root>/.venv-<name>``, built from ``envs/<name>.txt`` by workflow/rules/envs.smk, and we talk to it
only through files: a request JSON in, a result JSON out, written by a script of ``metrics/workers/``
that imports nothing of ours (our package is not installed there, and need not be).

Nothing here downloads: workers run with the Hugging Face hub offline, and the model files are checked by
the callers (metrics/imagereward.py, metrics/vbench.py) before a worker starts.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from dsbench.io import read_json, write_json

ENVS = ("imagereward", "vbench")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENVS_ROOT = REPO / "envs"
WORKERS_DIR = Path(__file__).resolve().parent / "workers"
MARKER = ".done"  # written last by create_env: a venv without it is a build that did not finish
BACKENDS = ("real", "fake")
TAIL_LINES = 40
# The main environment's Python settings must not leak into the worker's interpreter.
_DROPPED_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


class MissingEnvError(FileNotFoundError):
    """The metric's virtual environment is not built (or its build did not finish)."""


class WorkerError(RuntimeError):
    """A worker process failed; the message ends with the tail of its stderr."""


def _check_name(name: str) -> str:
    if name not in ENVS:
        raise ValueError(f"unknown external metric environment {name!r}; valid: {', '.join(ENVS)}")
    return name


def env_dir(name: str, envs_root: str | Path | None = None) -> Path:
    return Path(envs_root if envs_root is not None else DEFAULT_ENVS_ROOT) / f".venv-{_check_name(name)}"


def requirements_file(name: str) -> Path:
    return REPO / "envs" / f"{_check_name(name)}.txt"


def build_hint(name: str, envs_root: str | Path | None = None) -> str:
    d = env_dir(name, envs_root)
    return (f"`snakemake --cores 1 {d / MARKER}` (workflow/rules/envs.smk; `metric_envs` builds both), or "
            f"`python -m metrics.external create {name} --root {d.parent}`")


def env_python(name: str, envs_root: str | Path | None = None) -> Path:
    """The interpreter of a finished environment build."""
    d = env_dir(name, envs_root)
    python = d / "bin" / "python"
    if not (d / MARKER).is_file() or not python.exists():
        state = "incomplete (no build marker)" if python.exists() else "missing"
        raise MissingEnvError(f"the {name} metric environment is {state}: {d}. Build it from "
                              f"envs/{name}.txt with {build_hint(name, envs_root)}.")
    return python


def configured_python(name: str, python: str | None) -> str | Path:
    """The worker interpreter a metric's config names: `current` (this one; the fake backends are
    stdlib-only), a path, or by default the environment the workflow builds under envs/."""
    if python == "current":
        import sys

        return sys.executable
    return python or env_python(name, "envs")


def env_info(name: str, envs_root: str | Path | None = None) -> dict | None:
    """What the build recorded (requirements hash, Python, `pip freeze`), or None when not built."""
    marker = env_dir(name, envs_root) / MARKER
    return read_json(marker) if marker.is_file() else None


def worker_env(name: str, *, hf_home: str | Path | None = None,
               vbench_cache_dir: str | Path | None = None) -> dict[str, str]:
    """The worker's environment variables: offline hub, isolated from the main environment."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_VARS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    if hf_home is not None:
        env["HF_HOME"] = str(Path(hf_home).resolve())
    if _check_name(name) == "vbench":
        # VBench has ~20 bare torch.load calls on full pickled checkpoints (AMT, UMT, ViCLIP, ...), which
        # torch>=2.6 refuses by default. Allowed for this one process only, on the user's official files.
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        if vbench_cache_dir is not None:
            env["VBENCH_CACHE_DIR"] = str(Path(vbench_cache_dir).resolve())
    return env


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n:])


def run_worker(name: str, request: dict[str, Any], workdir: str | Path, *, backend: str = "real",
               python: str | Path | None = None, envs_root: str | Path | None = None,
               hf_home: str | Path | None = None, vbench_cache_dir: str | Path | None = None,
               timeout: float | None = None) -> dict:
    """Run ``metrics/workers/<name>_worker.py`` on ``request`` and return its result JSON.

    ``python`` overrides the environment's interpreter (tests use ``sys.executable`` with the stdlib-only
    fake backend). The request, result and the worker's stdout/stderr logs stay in ``workdir``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown worker backend {backend!r}; valid: {', '.join(BACKENDS)}")
    exe = Path(python) if python is not None else env_python(name, envs_root)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    req, res = workdir / f"{name}_request.json", workdir / f"{name}_result.json"
    res.unlink(missing_ok=True)  # a result left by an earlier run must never pass for this one's
    write_json(req, request)
    cmd = [str(exe), str(WORKERS_DIR / f"{name}_worker.py"), "--backend", backend,
           "--request", str(req), "--result", str(res)]
    out_log, err_log = workdir / f"{name}_worker.out.log", workdir / f"{name}_worker.err.log"
    env = worker_env(name, hf_home=hf_home, vbench_cache_dir=vbench_cache_dir)

    def failure(what: str) -> WorkerError:
        return WorkerError(f"{name} worker {what}: {shlex.join(cmd)}\n--- last lines of {err_log} ---\n{_tail(err_log)}")

    with open(out_log, "w") as out, open(err_log, "w") as err:
        try:
            rc = subprocess.run(cmd, cwd=workdir, env=env, stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise failure(f"timed out after {timeout} s") from None
    if rc != 0:
        raise failure(f"failed (exit {rc})")
    if not res.is_file():
        raise failure(f"exited 0 but wrote no result {res}")
    return read_json(res)


def create_env(name: str, requirements: str | Path | None = None, envs_root: str | Path | None = None, *,
               pip_args: Sequence[str] = (), base_python: str | Path | None = None) -> Path:
    """``python -m venv`` + ``pip install -r``; the marker (requirements hash, ``pip freeze``) comes last.

    An existing environment is updated in place (pip skips what is installed), so a rebuild after a
    requirements change does not fetch torch again.
    """
    requirements = Path(requirements) if requirements is not None else requirements_file(name)
    if not requirements.is_file():
        raise FileNotFoundError(f"requirements file not found: {requirements}")
    d = env_dir(name, envs_root)
    (d / MARKER).unlink(missing_ok=True)
    subprocess.run([str(base_python or sys.executable), "-m", "venv", str(d)], check=True)
    python = d / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-r", str(requirements), *pip_args], check=True)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], check=True, capture_output=True,
                            text=True).stdout.split()
    version = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                             check=True, capture_output=True, text=True).stdout.strip()
    write_json(d / MARKER, {
        "env": name, "requirements": str(requirements.resolve()),
        "requirements_sha256": hashlib.sha256(requirements.read_bytes()).hexdigest(),
        "python": version, "built_by": platform.python_version(), "packages": freeze,
    })
    return python


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metrics.external", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("create", help="build (or update) one metric environment")
    c.add_argument("name", choices=ENVS)
    c.add_argument("--requirements", help="pinned requirements (default: envs/<name>.txt of this checkout)")
    c.add_argument("--root", default=str(DEFAULT_ENVS_ROOT), help="folder holding .venv-<name>")
    c.add_argument("--pip-args", default="", help="extra pip arguments, one string (e.g. a torch index)")
    a = p.parse_args(argv)
    python = create_env(a.name, a.requirements, a.root, pip_args=shlex.split(a.pip_args))
    print(f"{a.name} environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
