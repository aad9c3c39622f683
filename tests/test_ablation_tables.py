"""Tables 5-8 (DiffSparse's ablations) as targets: config.yaml's paper versions plan without weights, the
CPU-proxy versions (configs/ablations_proxy.yaml) plan too, and every row points at a method the model
runs, with the setting it ablates, and at a row of the paper's transcription. Fast (dry runs only); the
proxy run itself is in README ("Tables 5-8")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dsbench import config as dsconfig
from dsbench.tables import load_paper_table

ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = ROOT / "results" / "paper"
CONFIG_YAML = ROOT / "config.yaml"
PROXY_YAML = ROOT / "configs" / "ablations_proxy.yaml"
TABLES = ("table5", "table6", "table7", "table8")


def _job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats:" table as {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    stats: dict[str, int] = {}
    for line in lines[start + 3:]:
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not m:
            break
        stats[m.group(1)] = int(m.group(2))
    return stats


def _diffsparse_variants(cfg: dict, model: str) -> int:
    return sum(cfg["methods"][m]["method"] == "diffsparse" for m in cfg["models"][model]["methods"])


@pytest.mark.parametrize("path", [CONFIG_YAML, PROXY_YAML], ids=lambda p: p.name)
def test_ablation_rows_point_at_paper_rows_and_run_methods(path):
    cfg = dsconfig.load(path)      # validates against the schema and the references
    for table in TABLES:
        spec = cfg["tables"][table]
        paper = load_paper_table(PAPER_DIR / f"{table}.csv")
        # every row of the paper's table, once, in the paper's order
        assert [r["paper_row"] for r in spec["rows"]] == paper["row"].tolist(), table
        runs = cfg["models"][spec["model"]]["methods"]
        assert all(r["method"] in runs for r in spec["rows"]), table


@pytest.mark.parametrize("path", [CONFIG_YAML, PROXY_YAML], ids=lambda p: p.name)
def test_ablation_rows_change_the_setting_they_name(path):
    cfg = dsconfig.load(path)
    methods = cfg["methods"]
    rows = {t: {r["paper_row"]: methods[r["method"]] for r in cfg["tables"][t]["rows"]} for t in TABLES}
    default = rows["table6"]["lpips"]
    assert default["method"] == "diffsparse" and default["ratio"] == 0.43
    # the paper's default is the same variant in Tables 5-8
    assert rows["table5"]["attention_diffsparse"] == rows["table7"]["interval_0_25"] \
        == rows["table8"]["delta_10"] == default

    def only_change(variant: dict) -> dict:
        """The settings in which a variant differs from the default (train / toca blocks compared inside)."""
        out = {}
        for key in set(variant) | set(default):
            a, b = variant.get(key), default.get(key)
            if isinstance(a, dict) or isinstance(b, dict):
                a, b = a or {}, b or {}
                out.update({f"{key}.{k}": a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)})
            elif a != b:
                out[key] = a
        return out

    for score in ("norm", "similarity"):
        base, ours = rows["table5"][f"{score}_base"], rows["table5"][f"{score}_diffsparse"]
        assert base["method"] == "toca" and base["score"] == score
        assert ours["method"] == "diffsparse" and ours["toca"]["score"] == score
        # the same ranking in both columns; ToCa's own allocation (on the paper's model at the fresh_ratio that
        # starts DiffSparse, which costs the same MACs; on the proxy matched to the schedule's MACs)
        drop = lambda d: {k: v for k, v in d.items() if k not in ("method", "fresh_ratio")}  # noqa: E731
        assert drop(base) == drop(ours["toca"])
        assert (base["fresh_ratio"] == ours["toca"]["fresh_ratio"]) == (path == CONFIG_YAML)
    base = rows["table5"]["attention_base"]
    assert base["method"] == "toca" and base.get("score", "attention") == "attention"
    assert (base["fresh_ratio"] == default["toca"]["fresh_ratio"]) == (path == CONFIG_YAML)
    assert only_change(rows["table6"]["l2"]) == {"train.loss": "l2"}
    assert only_change(rows["table6"]["ssim"]) == {"train.loss": "ssim"}
    for key, interval in (("interval_0_1", 0.1), ("interval_0_125", 0.125), ("interval_0_5", 0.5),
                          ("interval_1", 1.0)):
        assert only_change(rows["table7"][key]) == {"interval": interval}
    for key, delta in (("delta_0", 0.0), ("delta_5", 5.0), ("delta_20", 20.0)):
        assert only_change(rows["table8"][key]) == {"train.delta": delta}


@pytest.mark.parametrize("table", TABLES)
def test_paper_ablation_table_dry_run_plans(tmp_path, snakemake, table):
    """`snakemake -n --cores 8 table5` (6, 7, 8) plans the model cell it renders, without weights."""
    cfg = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    run = snakemake(tmp_path, table, "-n", "--cores", "8", "--configfile", str(CONFIG_YAML))
    assert run.returncode == 0, run.tail()
    stats = _job_stats(run.output)
    model = cfg["tables"][table]["model"]
    assert model == "pixart_alpha_256"
    n = len(cfg["models"][model]["methods"])
    assert stats[table] == 1 and stats["render_table"] == 1 and stats["aggregate"] == 1
    assert stats["evaluate"] == n and stats["macs"] == n
    assert stats["train_schedule"] == _diffsparse_variants(cfg, model)
    assert not (tmp_path / "results").exists()


def test_proxy_ablations_plan_in_one_command(tmp_path, snakemake):
    cfg = yaml.safe_load(PROXY_YAML.read_text(encoding="utf-8"))
    run = snakemake(tmp_path, *TABLES, "-n", "--cores", "2", "--configfile", str(PROXY_YAML),
                    "--replace-workflow-config")
    assert run.returncode == 0, run.tail()
    stats = _job_stats(run.output)
    n = len(cfg["models"]["proxy_pixart"]["methods"])
    assert all(stats[t] == 1 for t in TABLES) and stats["render_table"] == 4
    assert stats["generate_shard"] == n and stats["train_schedule"] == _diffsparse_variants(cfg, "proxy_pixart") == 12
