"""Latency (metrics/latency.py, dsbench/aggregate.py, dsbench/tables.py, rule latency): the Timer's
statistics on callables of known cost, the speedup spread from the quartiles, the flag on a speedup
above its MAC-ideal beyond the spread, and the latency job owning the cores. Fast: sleeps of 10-30 ms
and one Snakemake dry run."""
from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest

from tests.conftest import TINY_YAML

from dsbench.aggregate import aggregate, beyond_ideal
from dsbench.tables import render_table
from metrics.latency import quartiles, speedups, time_interleaved


def _sleeper(seconds: float, log: list | None = None, name: str = ""):
    def go():
        if log is not None:
            log.append(name)
        time.sleep(seconds)
    return go


# ---------------------------------------------------------------------------------------------
# the timer


def test_timer_reports_median_quartiles_and_runs_for_known_costs():
    t = time_interleaved({"none": _sleeper(0.03), "fast": _sleeper(0.01)}, repeats=4, threads=1)
    for name, cost in (("none", 0.03), ("fast", 0.01)):
        r = t[name]
        assert r["runs"] == r["samples"] == 4 and r["rounds"] == 4 and r["threads"] == 1
        assert cost <= r["min_s"] <= r["q25_s"] <= r["median_s"] <= r["q75_s"]
        assert r["median_s"] < cost + 0.02, r        # a sleep overshoots by scheduling delay only
        assert r["iqr_s"] == pytest.approx(r["q75_s"] - r["q25_s"]) and r["iqr_s"] >= 0
    sp = speedups(t)
    assert sp["none"]["speedup"] == 1.0
    assert 1.5 < sp["fast"]["speedup"] < 3.2            # 3x in sleep time, less the fixed overheads
    assert sp["fast"]["speedup_lo"] <= sp["fast"]["speedup"] <= sp["fast"]["speedup_hi"]


def test_timer_sizes_its_own_repeats_from_min_run_time():
    """blocked_autorange times until min_run_time is spent: a 10 ms call gets several runs a round."""
    t = time_interleaved({"none": _sleeper(0.01)}, repeats=2, min_run_time=0.05, threads=1)
    assert t["none"]["runs"] >= 2 * 3, t                # >= 50 ms a round of >= 10 ms calls (<= 17 ms each)
    assert 0.01 <= t["none"]["median_s"] < 0.03


def test_rounds_interleave_methods_and_cost_two_calls_a_round():
    """Each round visits every method (drift hits all alike); with min_run_time 0 a round costs a
    method one untimed call (the Timer's block-size estimate, its warm-up) and one timed call."""
    log: list[str] = []
    t = time_interleaved({"a": _sleeper(0.011, log, "a"), "b": _sleeper(0.011, log, "b")}, warmup=1,
                         repeats=3, threads=1)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert t["a"]["runs"] == t["b"]["runs"] == 3


def test_quartiles_and_speedup_spread_by_hand():
    # torch's linear interpolation (Measurement's IQR): [1, 2, 3, 4] -> 1.75, 2.5, 3.25
    assert quartiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx((1.75, 2.5, 3.25))
    assert quartiles([2.0]) == (2.0, 2.0, 2.0)
    timings = {"none": {"median_s": 1.2, "q25_s": 1.0, "q75_s": 1.5},
               "m": {"median_s": 0.6, "q25_s": 0.5, "q75_s": 0.8}}
    sp = speedups(timings)
    assert sp["m"] == pytest.approx({"speedup": 2.0, "speedup_lo": 1.0 / 0.8, "speedup_hi": 1.5 / 0.5})
    assert sp["none"] == pytest.approx({"speedup": 1.0, "speedup_lo": 1.0 / 1.5, "speedup_hi": 1.5 / 1.0})


# ---------------------------------------------------------------------------------------------
# the MAC-ideal bound and its flag


def test_beyond_ideal_only_when_the_low_end_is_above_the_ideal():
    assert beyond_ideal(9.0, 4.0)                       # 25 % steps "at 10.5x" of the issue
    assert beyond_ideal(4.3, 4.0) and beyond_ideal(4.3, 4.0, tolerance=0.0)
    assert not beyond_ideal(3.9, 4.0) and not beyond_ideal(4.0, 4.0)
    assert not beyond_ideal(4.1, 4.0) and beyond_ideal(4.1, 4.0, tolerance=0.0)   # within the 5 % tolerance
    assert not beyond_ideal(math.nan, 4.0) and not beyond_ideal(2.5, None) and not beyond_ideal(None, 2.0)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _cell_inputs(tmp_path, latency_methods: dict):
    macs = {"none": 8e9, "steps_25": 2e9, "fora_n2": 4e9, "toca": 5e9}
    mac_paths, met_paths = [], []
    for m, total in macs.items():
        mac_paths.append(_write(tmp_path / "macs" / f"{m}.json",
                                {"num_steps": 20, "macs_c1": total / 4, "macs_total": total}))
        met_paths.append(_write(tmp_path / "metrics" / f"{m}.json", {"fid": 10.0}))
    lat = _write(tmp_path / "latency.json", {"threads": 2, "methods": latency_methods})
    prov = {m: {"git_commit": "abc", "config_hash": "h", "device": "cpu", "model_source": "proxy"} for m in macs}
    return list(macs), mac_paths, met_paths, lat, prov


def _lat(median, q25, q75, speedup, lo, hi, runs=3):
    return {"median_s": median, "q25_s": q25, "q75_s": q75, "iqr_s": q75 - q25, "runs": runs,
            "speedup": speedup, "speedup_lo": lo, "speedup_hi": hi}


def test_aggregate_adds_spread_ideal_and_flags_only_the_impossible_row(tmp_path):
    lat = {"none": _lat(5.5, 1.6, 5.6, 1.0, 1.6 / 5.6, 5.6 / 1.6),
           "steps_25": _lat(0.52, 0.50, 0.55, 10.5, 1.6 / 0.55, 5.6 / 0.50),   # lo 2.9 < ideal 4: spread allows it
           "fora_n2": _lat(1.1, 1.05, 1.15, 4.9, 4.6, 5.2),                    # lo 4.6 > ideal 2: impossible
           "toca": _lat(4.0, 3.9, 4.1, 1.4, 1.3, 1.5)}                         # within: 1.3-1.5 vs 1.6
    methods, macs, mets, lat_path, prov = _cell_inputs(tmp_path, lat)
    df = aggregate("proxy_pixart", methods, macs, mets, lat_path, prov, tmp_path / "out.csv").set_index("method")
    assert df.loc["steps_25", "speedup_ideal"] == pytest.approx(4.0)
    assert df.loc["fora_n2", "speedup_ideal"] == pytest.approx(2.0) and df.loc["toca", "speedup_ideal"] == pytest.approx(1.6)
    assert df.loc["fora_n2", "speedup_lo"] == 4.6 and df.loc["fora_n2", "speedup_hi"] == 5.2
    assert df.loc["fora_n2", "latency_q25_s"] == 1.05 and df.loc["fora_n2", "latency_runs"] == 3
    assert df["speedup_beyond_ideal"].to_dict() == {"none": False, "steps_25": False, "fora_n2": True, "toca": False}
    # the 10.5x: its spread reaches the ideal, but its median is above it: flagged too
    assert df["speedup_flag"].to_dict() == {"none": "noisy", "steps_25": "above_ideal", "fora_n2": "beyond_ideal",
                                            "toca": ""}
    assert (df["latency_threads"] == 2).all()
    back = pd.read_csv(tmp_path / "out.csv")
    assert back["speedup_beyond_ideal"].tolist() == [False, False, True, False]


def test_aggregate_reads_a_latency_json_without_spread(tmp_path):
    """Latency from before the Timer (median_s, min_s, repeats): no spread, no flag, still a CSV."""
    old = {m: {"median_s": 1.0 / s, "min_s": 0.9 / s, "repeats": 3, "speedup": s}
           for m, s in (("none", 1.0), ("steps_25", 10.5), ("fora_n2", 1.9), ("toca", 1.5))}
    methods, macs, mets, lat_path, prov = _cell_inputs(tmp_path, old)
    df = aggregate("proxy_pixart", methods, macs, mets, lat_path, prov, tmp_path / "out.csv")
    assert df["speedup_lo"].isna().all() and not df["speedup_beyond_ideal"].any()
    assert df["latency_runs"].tolist() == [3, 3, 3, 3]


ROWS = [{"method": "none", "label": "20 steps (full)"}, {"method": "steps_25", "label": "25% steps"},
        {"method": "fora_n2", "label": "FORA (N = 2)"}, {"method": "toca", "label": "ToCa"}]


def test_render_names_the_flagged_row_and_shows_the_spread(tmp_path):
    lat = {"none": _lat(1.5, 1.45, 1.55, 1.0, 1.45 / 1.55, 1.55 / 1.45),
           "steps_25": _lat(0.5, 0.45, 0.55, 3.0, 2.64, 3.44),     # spread 27 % of the speedup: noisy
           "fora_n2": _lat(0.3, 0.29, 0.31, 4.9, 4.68, 5.34),      # low end above the ideal 2
           "toca": _lat(1.0, 0.95, 1.05, 1.5, 1.38, 1.63)}          # inside its ideal 1.6, narrow: no flag
    methods, macs, mets, lat_path, prov = _cell_inputs(tmp_path, lat)
    ours = aggregate("proxy_pixart", methods, macs, mets, lat_path, prov, tmp_path / "agg.csv")
    df = render_table("Table 1", ours, None, ROWS, ["macs_c1_G", "speedup", "fid"], tmp_path / "t",
                      notes=["A note."])
    assert df.set_index("method")["speedup_beyond_ideal"].to_dict() == \
        {"none": False, "steps_25": False, "fora_n2": True, "toca": False}
    assert list(df.columns[-4:]) == ["git_commit", "config_hash", "device", "model_source"]
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    table = [[c.strip() for c in l.split("|")[1:-1]] for l in md.splitlines() if l.startswith("| ")]
    header, rows = table[0], {r[0]: dict(zip(table[0], r)) for r in table[1:]}
    assert header[3] == "Speedup (ours)"
    assert rows["FORA (N = 2)"]["Speedup (ours)"] == "4.90× (4.68–5.34)†"
    assert rows["25% steps"]["Speedup (ours)"] == "3.00× (2.64–3.44)§"
    assert rows["ToCa"]["Speedup (ours)"] == "1.50× (1.38–1.63)"
    assert rows["ToCa"]["Speedup (paper)"] == "—"        # a missing value gets no spread
    note = next(l for l in md.splitlines() if "beyond the timing spread" in l)
    assert note.startswith("- † Measured speedup above its MAC-ideal beyond the timing spread: not trustworthy")
    assert "FORA (N = 2) (4.90×, spread 4.68–5.34×, MAC-ideal 2.00×)" in note and "rerun with the machine idle" in note
    assert "ToCa" not in note and "25% steps" not in note
    noisy = next(l for l in md.splitlines() if l.startswith("- §"))
    assert "the machine was busy" in noisy and "25% steps (3.00×, spread 2.64–3.44×, MAC-ideal 4.00×)" in noisy
    tex = (tmp_path / "t.tex").read_text(encoding="utf-8")
    assert r"4.90$\times$ (4.68--5.34)$^\dagger$" in tex and "†" not in tex.split(r"\begin{tabular}")[1]


def test_render_without_spread_or_flag_adds_no_note(tmp_path):
    ours = pd.DataFrame([dict(method="none", speedup=1.0, fid=1.0, speedup_lo=0.97, speedup_hi=1.03,
                              speedup_ideal=1.0),
                         dict(method="toca", speedup=1.7, fid=2.0, speedup_lo=1.6, speedup_hi=1.8,
                              speedup_ideal=1.75)])
    render_table("T", ours, None, ROWS[:1] + ROWS[3:], ["speedup", "fid"], tmp_path / "t")
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "MAC-ideal" not in md and "†" not in md and "1.70× (1.60–1.80)" in md
    # an older CSV without the spread columns renders as before
    render_table("T", ours[["method", "speedup", "fid"]], None, ROWS[:1], ["speedup", "fid"], tmp_path / "u")
    assert "| 20 steps (full) | — | 1.00× | — | 1.00 |" in (tmp_path / "u.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the workflow: the latency job owns the cores


@pytest.mark.parametrize("cores", [2, 3])
def test_latency_job_gets_all_cores_and_as_many_torch_threads(tmp_path, snakemake, cores):
    run = snakemake(tmp_path, "results/latency/tiny_pixart.json", "-n", "--cores", str(cores), "--printshellcmds",
                    "--configfile", str(TINY_YAML), "--replace-workflow-config")
    assert run.returncode == 0, run.tail()
    block = run.output[run.output.index("rule latency:"):]
    block = block[:block.index("\n\n")] if "\n\n" in block else block
    assert f"threads: {cores}" in block, block
    assert f"OMP_NUM_THREADS={cores} " in run.output and "dsbench latency" in run.output
