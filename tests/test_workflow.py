"""End to end: the paper DAG plans without weights, and the tiny smoke matrix runs through every rule
(generate -> reference -> macs / latency / evaluate -> aggregate -> render) in a scratch directory.

The smoke run happens once per session (module-scoped fixture, ~75 s on 2 cores); the tests below
read its outputs."""
from __future__ import annotations

import csv
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG_YAML = ROOT / "config.yaml"
SMOKE_YAML = ROOT / "tests" / "smoke.yaml"
SMOKE_ARGS = ("--configfile", str(SMOKE_YAML), "--replace-workflow-config", "smoke")
METRICS = ["macs_c1_T", "macs_total_T", "speedup", "fid", "clip", "psnr", "lpips"]
PROVENANCE = ["git_commit", "config_hash", "device", "model_source"]
_SMOKE = yaml.safe_load(SMOKE_YAML.read_text(encoding="utf-8"))
SMOKE_ROWS = [r["method"] for r in _SMOKE["tables"]["table1"]["rows"]]
SMOKE_METHODS = _SMOKE["models"]["tiny_pixart"]["methods"]


def _job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats:" table as {rule: count}."""
    stats: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    for line in lines[start + 3:]:           # skip the title, header and dashes
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not m:
            break
        stats[m.group(1)] = int(m.group(2))
    return stats


def _rows(path: Path) -> dict[str, dict[str, str]]:
    """A CSV keyed by its `method` column (csv + float() parse numbers exactly, unlike pandas' C parser)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len({r["method"] for r in rows}) == len(rows), f"duplicate methods in {path}"
    return {r["method"]: r for r in rows}


# ---------------------------------------------------------------------------------------------
# the paper's matrix: planned without any weights


def test_table1_dry_run_plans_every_step(tmp_path, snakemake):
    cfg = yaml.safe_load(CONFIG_YAML.read_text())
    run = snakemake(tmp_path, "table1", "-n", "--cores", "8", "--configfile", str(CONFIG_YAML))
    assert run.returncode == 0, run.tail()
    assert not (tmp_path / cfg["resources"]).exists()       # no weights, datasets or statistics here
    stats = _job_stats(run.output)

    model = cfg["tables"]["table1"]["model"]
    methods = cfg["models"][model]["methods"]
    n_shards = math.ceil(cfg["models"][model]["num_samples"] / cfg["shard_size"])
    expected = {
        "generate_shard": len(methods) * n_shards,
        "reference_stats": 1,
        "macs": len(methods),
        "latency": 1,
        "evaluate": len(methods),
        "aggregate": 1,
        "render_table": 1,
        "table1": 1,
    }
    assert stats == {**expected, "total": sum(expected.values())}
    assert not (tmp_path / "results").exists()              # a dry run writes nothing


# ---------------------------------------------------------------------------------------------
# the smoke matrix, run for real


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, snakemake):
    work = tmp_path_factory.mktemp("smoke")
    try:
        run = snakemake(work, "--cores", "2", "--show-failed-logs", *SMOKE_ARGS, timeout=480)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail("smoke DAG timed out after 480 s:\n" + "\n".join(out.splitlines()[-80:]))
    (work / "snakemake.out").write_text(run.output)
    if run.returncode != 0:
        pytest.fail(f"smoke DAG failed (exit {run.returncode}) in {work}:\n{run.tail(120)}")
    return work


def test_smoke_tables_written(smoke_run):
    prefix = smoke_run / "results" / "tables" / "table1"
    for ext in ("md", "csv", "tex"):
        assert Path(f"{prefix}.{ext}").is_file(), f"missing {prefix}.{ext}"
    md = Path(f"{prefix}.md").read_text(encoding="utf-8")
    assert "PixArt-α (tiny)" in md and "50% steps" in md
    assert "2.860 T" in md and "1.430 T" in md                      # the paper's MACs beside ours
    tex = Path(f"{prefix}.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
    assert r"PixArt-$\alpha$ (tiny)" in tex and r"50\% steps" in tex


def test_smoke_table1_values(smoke_run):
    path = smoke_run / "results" / "tables" / "table1.csv"
    rows = _rows(path)
    assert list(rows) == SMOKE_ROWS                                  # the configured rows, in order
    for method, row in rows.items():
        assert row["in_ours"] == "True"
        for metric in METRICS:
            value = float(row[f"{metric}_ours"])
            assert math.isfinite(value), f"{method} {metric}_ours = {row[f'{metric}_ours']!r}"

    none, half = rows["none"], rows["steps_50"]
    # paper transcription (results/paper/table1.csv)
    assert float(none["macs_c1_T_paper"]) == 2.86
    assert float(half["macs_c1_T_paper"]) == 1.43
    # 8 vs 4 sampling steps: exactly half the per-image MACs
    assert float(half["macs_c1_T_ours"]) * 2 == float(none["macs_c1_T_ours"])
    assert 0 < float(half["macs_total_T_ours"]) < float(none["macs_total_T_ours"])
    # none is the baseline, and is compared with itself
    assert float(none["speedup_ours"]) == 1.0
    assert float(none["psnr_ours"]) == 100.0                         # the PSNR cap for identical images
    assert float(none["lpips_ours"]) == pytest.approx(0.0, abs=1e-9)
    # steps_50 differs from none
    assert float(half["psnr_ours"]) < 100.0
    assert float(half["lpips_ours"]) > 0.0
    assert 0.0 < float(half["clip_ours"]) <= 1.0 and float(half["fid_ours"]) >= 0.0
    # every accelerated method: fewer MACs than none, measured speedup present, not identical to none
    for method in SMOKE_ROWS[1:]:
        r = rows[method]
        assert 0 < float(r["macs_c1_T_ours"]) < float(none["macs_c1_T_ours"]), method
        assert float(r["speedup_ours"]) > 0 and float(r["psnr_ours"]) < 100.0, method


def test_smoke_cell_csv_provenance(smoke_run):
    rows = _rows(smoke_run / "results" / "tiny_pixart.csv")
    assert list(rows) == SMOKE_METHODS
    assert rows["none"]["num_steps"] == "8" and rows["steps_50"]["num_steps"] == "4"
    for method, row in rows.items():
        for col in PROVENANCE:
            assert row.get(col), f"{method}: provenance column {col!r} missing or empty"
        assert row["model"] == "tiny_pixart"
        assert row["device"].startswith("cpu")
        assert "tiny" in row["model_source"]
        assert re.fullmatch(r"[0-9a-f]{12}", row["config_hash"]), row["config_hash"]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if head:                                                # a git checkout: the commit is recorded
        assert {r["git_commit"].removesuffix("+dirty") for r in rows.values()} == {head}
    # the hash covers the method's settings: the two cells differ
    assert rows["none"]["config_hash"] != rows["steps_50"]["config_hash"]
    # the table CSV carries the same provenance through
    table = _rows(smoke_run / "results" / "tables" / "table1.csv")
    for method in rows:
        assert {c: table[method][c] for c in PROVENANCE} == {c: rows[method][c] for c in PROVENANCE}


def test_smoke_rerun_is_up_to_date(smoke_run, snakemake):
    run = snakemake(smoke_run, "-n", "--cores", "2", *SMOKE_ARGS)
    assert run.returncode == 0, run.tail()
    assert "Nothing to be done" in run.output, run.tail()
