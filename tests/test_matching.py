"""Budget-matched variants (dsbench/matching.py): a `match` block tuned by rule match_budget, read by every cell."""
import copy
import json

import pytest

from dsbench import config as config_mod
from dsbench.cell import Cell
from dsbench.cli import main
from dsbench.measure import predict_macs
from tests.util import tiny_config

SPEC = {"target": "steps_50", "key": "fresh_ratio", "range": [0.0, 1.0], "tolerance": 0.02}


def matched_config(**spec) -> dict:
    cfg = tiny_config()
    cfg["methods"]["toca_m"] = {"method": "toca", "threshold": 3, "grid": 2, "match": {**SPEC, **spec}}
    cfg["models"]["tiny_pixart"]["methods"].append("toca_m")
    return config_mod.validate(cfg)


def test_match_budget_writes_the_value_every_cell_then_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                          # results/matched/... is relative, as in a job
    cfg = matched_config()
    with pytest.raises(FileNotFoundError, match=r"results/matched/tiny_pixart/toca_m.json is missing.*match_budget"):
        Cell(cfg, "tiny_pixart", "toca_m").method_cfg
    out = tmp_path / "results" / "matched" / "tiny_pixart" / "toca_m.json"
    assert main(["match-macs", "--config", json.dumps(cfg), "--model", "tiny_pixart", "--method", "toca_m",
                 "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert found["spec"] == {**SPEC, "iterations": 12} and found["key"] == "fresh_ratio" and 0 < found["value"] < 1
    assert abs(found["relative_error"]) <= 0.02 and found["within_tolerance"] is True
    cell = Cell(cfg, "tiny_pixart", "toca_m")
    assert cell.method_cfg == {"method": "toca", "threshold": 3, "grid": 2, "fresh_ratio": found["value"]}
    target = predict_macs(Cell(cfg, "tiny_pixart", "steps_50"))
    assert predict_macs(cell) == pytest.approx(target, rel=0.02)           # the row sits at the target's MACs
    assert cell.sample_identity()["method"]["fresh_ratio"] == found["value"]   # its samples record the value
    # another spec is refused, not read; an existing match is not overwritten without --force
    with pytest.raises(ValueError, match="was matched under another spec"):
        Cell(matched_config(tolerance=0.01), "tiny_pixart", "toca_m").method_cfg
    assert main(["match-macs", "--config", json.dumps(cfg), "--model", "tiny_pixart", "--method", "toca_m",
                 "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ({"target": "nope"}, "methods.toca_m.match.target: 'nope' must be another, unmatched variant"),
    ({"target": "toca_m"}, "methods.toca_m.match.target: 'toca_m' must be another"),
    ({"key": "fresh"}, "methods.toca_m.match.key: toca has no setting 'fresh'"),
    ({"range": [1.0, 0.0]}, "methods.toca_m.match.range: must be [lo, hi] with lo < hi"),
    ({"tolerance": 0.9}, "methods.toca_m.match.tolerance: must be a number in (0, 0.5)"),
    ({"range": [0.0, 2.0]}, "methods.toca_m.fresh_ratio: must be in [0, 1], got 2.0"),   # the range's ends too
    ({"extra": 1}, "methods.toca_m.match: unknown setting(s) ['extra']"),
])
def test_bad_match_blocks_are_refused_by_key(spec, message):
    with pytest.raises(config_mod.ConfigError) as e:
        matched_config(**spec)
    assert message in str(e.value)


def test_the_dag_matches_before_it_samples(tmp_path, snakemake):
    import yaml

    from tests.util import REPO

    cfg = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())
    cfg["methods"]["toca_m"] = {"method": "toca", "threshold": 3, "grid": 2, "match": copy.deepcopy(SPEC)}
    cfg["models"]["tiny_pixart"]["methods"].append("toca_m")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"),
                    "--replace-workflow-config", "results/macs/tiny_pixart/toca_m.json")
    assert run.returncode == 0, run.tail()
    assert "rule match_budget:" in run.output and "results/matched/tiny_pixart/toca_m.json" in run.output


def test_a_matched_peer_is_calibrated_before_its_match(tmp_path, monkeypatch):
    """MagCache's calibration reads no threshold, so rule calibrate_peer runs before match_budget (which
    counts MACs with the calibration): `dsbench calibrate-peer` ignores the variant's match block."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config()
    cfg["methods"]["magc"] = {"method": "diffusers_magcache", "calibration_samples": 2,
                              "match": {"target": "toca", "key": "threshold", "range": [0.0, 1.0]}}
    cfg["models"]["tiny_pixart"]["methods"].append("magc")
    cfg = config_mod.validate(cfg)
    out = tmp_path / "results" / "peers" / "tiny_pixart" / "magc.json"
    assert main(["calibrate-peer", "--config", json.dumps(cfg), "--model", "tiny_pixart", "--method", "magc",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert len(rec["mag_ratios"]) == cfg["models"]["tiny_pixart"]["steps"]
    assert not (tmp_path / "results" / "matched").exists()
