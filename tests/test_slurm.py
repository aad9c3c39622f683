"""The cluster path for real: a single-node SLURM (ci/slurm-up.sh) runs a cut of the tiny DAG
(conftest.tiny_cut_config) through Snakemake's SLURM executor plugin and profiles/slurm-local; its CSVs
equal the local executor's bit for bit (timing columns aside), and a controller killed with SIGKILL while
jobs are queued reruns to the same results.

Where SLURM cannot start (not root, no apt-get), the test is skipped with the reason, except under CI
(`CI` set), where it fails with it: CI must run it."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, snakemake_cmd, tool_env

pytestmark = pytest.mark.slow
UP, DOWN = REPO / "ci" / "slurm-up.sh", REPO / "ci" / "slurm-down.sh"
PROFILE = REPO / "profiles" / "slurm-local"
# Columns that are timings or derived from them (a table's as `<name>_ours`): they differ between any two
# runs. The paper's speedup and the MAC-ideal one are compared with the rest.
TIMED = {"latency_s", "latency_q25_s", "latency_q75_s", "latency_runs", "latency_threads", "speedup",
         "speedup_lo", "speedup_hi", "speedup_beyond_ideal", "speedup_flag"}


def _squeue(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i %t"], capture_output=True, text=True)
    return out.stdout.split("\n") if out.stdout.strip() else []


def _run_id(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if line.startswith("SLURM run ID: "):
            return line.split(": ", 1)[1].strip()
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """Brings the test cluster up (or finds it up, as .ci/run leaves it); stops what it started itself."""
    if not UP.is_file():
        pytest.fail(f"{UP} is missing")
    up = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        why = (up.stderr.strip() or up.stdout.strip() or "no output").splitlines()[-1]
        message = f"SLURM could not start on this machine: {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    print("\n" + up.stdout)
    started_here = "started slurmctld" in up.stdout
    yield
    if started_here:
        down = subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=120)
        print(down.stdout)
        assert down.returncode == 0, down.stderr
        left = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True).stdout.split()
        assert not left, f"slurmctld still running after ci/slurm-down.sh: {left}"


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, tiny_cut_yaml) -> dict:
    """The DAG through SLURM: started, killed with SIGKILL once its jobs are queued, their jobs cancelled
    (the README's recovery), unlocked and rerun to the end."""
    work = tmp_path_factory.mktemp("slurm")
    cmd = snakemake_cmd(work, "--configfile", str(tiny_cut_yaml), "--replace-workflow-config", "all",
                        workflow_profile=PROFILE)
    t0 = time.monotonic()
    first_log = work / "first.log"
    with first_log.open("w") as log:
        first = subprocess.Popen(cmd, cwd=work, env=tool_env(), stdout=log, stderr=subprocess.STDOUT)
    queued, run_id = [], None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        run_id = run_id or _run_id(first_log)
        queued = _squeue(run_id) if run_id else []
        if any(line.endswith(" PD") for line in queued):
            break
        time.sleep(0.5)
    assert first.poll() is None and run_id, f"no job was queued in 300 s:\n{first_log.read_text()[-4000:]}"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic() - t0
    # What the dead controller left in the queue would race its rerun for the same outputs.
    subprocess.run(["scancel", "--name", run_id], check=True)
    for _ in range(120):
        if not _squeue(run_id):
            break
        time.sleep(0.5)
    assert not _squeue(run_id), "the killed run's jobs did not leave the queue"
    refused = subprocess.run(cmd, cwd=work, env=tool_env(), capture_output=True, text=True, timeout=120)
    unlock = subprocess.run([*cmd, "--unlock"], cwd=work, env=tool_env(), capture_output=True, text=True,
                            timeout=120)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    second = subprocess.run(cmd, cwd=work, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=1800)
    wall = time.monotonic() - t0
    print(f"\nSLURM run: killed (SIGKILL) at {killed_at:.0f} s with {len(queued)} job(s) queued; "
          f"rerun finished at {wall:.0f} s in all")
    assert second.returncode == 0, second.stdout[-6000:]
    return {"work": work, "queued": queued, "locked": refused, "rerun": second.stdout}


def _csvs(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted((root / "results").rglob("*.csv"))}


def test_slurm_csvs_equal_the_local_runs(tiny_cut_run, slurm_run):
    """Every results CSV of the SLURM run equals the local run's, value for value, timings aside."""
    local, cluster = _csvs(tiny_cut_run), _csvs(slurm_run["work"])
    assert set(cluster) == set(local) and local, (sorted(cluster), sorted(local))
    compared = []
    for name in sorted(local):
        a, b = pd.read_csv(local[name], dtype=str), pd.read_csv(cluster[name], dtype=str)
        timed = [c for c in a.columns if c.removesuffix("_ours") in TIMED]
        assert list(a.columns) == list(b.columns), name
        assert len(a) == len(b) > 0, name
        pd.testing.assert_frame_equal(a.drop(columns=timed), b.drop(columns=timed), check_exact=True, obj=name)
        compared.append(f"{name}: {len(a)} rows x {a.shape[1] - len(timed)} columns (without {len(timed)} timed)")
    print("\nSLURM vs local, equal:\n  " + "\n  ".join(compared))
    assert "results/tiny_pixart.csv" in local and "results/tables/table1.csv" in local, sorted(local)


def test_slurm_run_went_through_the_plugin(slurm_run):
    """Jobs ran as SLURM jobs (arrays for the shards, the MAC counts as one group job), not locally."""
    out = slurm_run["rerun"]
    assert "Submitted array job with Snakemake IDs" in out and "The individual task IDs are 1-6." in out, out[-3000:]
    assert "group_macs_macs" in out, out[-3000:]
    # The killed controller's lock stopped a plain rerun with Snakemake's own message.
    refused = slurm_run["locked"]
    assert refused.returncode != 0 and "cannot be locked" in refused.stdout + refused.stderr


def test_cluster_profiles_differ_only_in_what_a_local_cluster_needs():
    """profiles/slurm-local is profiles/slurm with only the single-node cluster's keys changed."""
    real = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    local = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    local_only = {"slurm-no-account", "slurm-status-command", "slurm-init-seconds-before-status-checks"}
    assert set(local) - set(real) == local_only and set(real) <= set(local)
    for key in set(real) - {"default-resources", "set-resources", "set-threads"}:
        assert local[key] == real[key], key
    # Resources: the same keys per rule; only the partition, the account, GPUs and memory change.
    changed = {"slurm_partition", "gpu", "mem_mb"}
    assert set(real["default-resources"]) - set(local["default-resources"]) == {"slurm_account"}
    assert set(real["set-resources"]) == set(local["set-resources"])
    for rule, res in real["set-resources"].items():
        assert set(res) == set(local["set-resources"][rule]), rule
        for key, value in res.items():
            if key not in changed:
                assert local["set-resources"][rule][key] == value, (rule, key)
        assert local["set-resources"][rule].get("gpu", 0) == 0, rule
    assert set(real["set-threads"]) == set(local["set-threads"])


def _dry_run_with(profile_flag: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in tool_env().items() if not k.startswith("DSBENCH_SLURM_")}
    # workflow_profile=None: as a user would, so that --profile also loads profiles/default.
    cmd = snakemake_cmd(REPO, profile_flag, str(REPO / "profiles" / "slurm"), "-n", "table1", workflow_profile=None)
    return subprocess.run(cmd, cwd=REPO, env=base | env, capture_output=True, text=True, timeout=300)


def _error_line(p: subprocess.CompletedProcess) -> str:
    lines = (p.stdout + p.stderr).splitlines()
    return next(lines[i + 1] for i, line in enumerate(lines) if line.startswith("ValueError in file"))


@pytest.mark.parametrize("profile_flag", ["--profile", "--workflow-profile"])
def test_cluster_profile_with_an_unset_account_stops_before_any_job(profile_flag):
    """`snakemake --profile profiles/slurm -n table1` without $DSBENCH_SLURM_ACCOUNT: one line naming it."""
    p = _dry_run_with(profile_flag, {"DSBENCH_SLURM_PARTITION": "cpu", "DSBENCH_SLURM_GPU_PARTITION": "gpu"})
    assert p.returncode != 0
    assert _error_line(p) == ("profiles/slurm: set DSBENCH_SLURM_ACCOUNT (slurm_account) in the environment "
                              "(export VAR=...); no job was submitted")
    assert "Job stats" not in p.stdout + p.stderr


def test_cluster_profile_beside_the_default_profile_is_refused_and_plans_as_workflow_profile():
    env = {"DSBENCH_SLURM_ACCOUNT": "acct", "DSBENCH_SLURM_PARTITION": "cpu", "DSBENCH_SLURM_GPU_PARTITION": "gpu"}
    refused = _dry_run_with("--profile", env)
    assert refused.returncode != 0 and "--workflow-profile profiles/slurm" in _error_line(refused)
    planned = _dry_run_with("--workflow-profile", env)
    assert planned.returncode == 0, (planned.stdout + planned.stderr)[-3000:]
    assert "generate_shard" in planned.stdout and "This was a dry-run" in planned.stdout


def test_unset_variables_names_each_variable_and_the_keys_it_fills():
    from dsbench.cluster import profile_error, unset_message, unset_variables

    values = [("slurm_account", "$DSBENCH_SLURM_ACCOUNT"), ("slurm_partition", "${DSBENCH_SLURM_PARTITION}"),
              ("runtime", 30), ("evaluate.slurm_partition", "$DSBENCH_SLURM_GPU_PARTITION"),
              ("latency.slurm_partition", "$DSBENCH_SLURM_GPU_PARTITION"), ("tmpdir", "$TMPDIR")]
    assert unset_variables(values, {"DSBENCH_SLURM_PARTITION": "cpu"}) == {
        "DSBENCH_SLURM_ACCOUNT": ["slurm_account"],
        "DSBENCH_SLURM_GPU_PARTITION": ["evaluate.slurm_partition", "latency.slurm_partition"]}
    # An empty value is as unset as a missing one; other variables ($TMPDIR) are not ours to judge.
    assert list(unset_variables(values, {"DSBENCH_SLURM_ACCOUNT": "", "DSBENCH_SLURM_PARTITION": "x",
                                         "DSBENCH_SLURM_GPU_PARTITION": "y"})) == ["DSBENCH_SLURM_ACCOUNT"]
    assert unset_variables(values, {"DSBENCH_SLURM_ACCOUNT": "a", "DSBENCH_SLURM_PARTITION": "b",
                                    "DSBENCH_SLURM_GPU_PARTITION": "c"}) == {}
    assert unset_message(unset_variables(values, {})) == (
        "profiles/slurm: set DSBENCH_SLURM_ACCOUNT (slurm_account), DSBENCH_SLURM_PARTITION (slurm_partition) "
        "and DSBENCH_SLURM_GPU_PARTITION (slurm_partition of evaluate, latency) in the environment "
        "(export VAR=...); no job was submitted")
    # Set, the variables pass; profiles/default's gpu=1 is refused only beside slurm_* resources.
    env = {"DSBENCH_SLURM_ACCOUNT": "a", "DSBENCH_SLURM_PARTITION": "b", "DSBENCH_SLURM_GPU_PARTITION": "c"}
    assert profile_error(values, None, env) is None and profile_error(values, 4, env) is None
    assert "--workflow-profile profiles/slurm" in profile_error(values, 1, env)
    assert profile_error([("runtime", 30)], 1, env) is None
    assert profile_error(values, 1, {}).startswith("profiles/slurm: set DSBENCH_SLURM_ACCOUNT")
