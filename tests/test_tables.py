"""dsbench.tables: paper-vs-ours rendering, and the paper transcriptions in results/paper/."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsbench.tables import (
    MISSING,
    PROVENANCE_COLUMNS,
    format_value,
    latex_escape,
    load_paper_table,
    render_table,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = ROOT / "results" / "paper"
PAPER_CSVS = sorted(PAPER_DIR.glob("*.csv"))
# DiffSparse's ablations (Tables 5-8): variants of DiffSparse, with no unaccelerated row.
ABLATION_TABLES = ("table5", "table6", "table7", "table8")

COLUMNS = ["macs_c1_T", "macs_total_T", "speedup", "fid", "clip", "psnr", "lpips"]
ROWS = [
    {"method": "none", "paper_row": "none", "label": "PixArt-α"},
    {"method": "toca", "paper_row": "toca", "label": "ToCa"},
    {"method": "diffsparse_r43", "paper_row": "diffsparse_r43", "label": "DiffSparse (R = 43%)"},
    {"method": "my_variant", "paper_row": None, "label": "ours_only 10%"},
]


def _ours() -> pd.DataFrame:
    prov = dict(git_commit="0123abc", config_hash="cfg42", device="cpu", model_source="tiny-random")
    return pd.DataFrame([
        dict(method="none", macs_c1_T=2.857, macs_total_T=5.714, speedup=1.0, fid=123.456,
             clip=0.1111, psnr=math.inf, lpips=0.0, **prov),
        dict(method="toca", macs_c1_T=1.6012, macs_total_T=3.2024, speedup=1.7123, fid=130.25,
             clip=0.1099, psnr=24.567, lpips=0.12345, **prov),
        dict(method="diffsparse_r43", macs_c1_T=1.64, macs_total_T=3.28, speedup=1.69, fid=129.0,
             clip=0.108, psnr=25.0, lpips=0.1, **prov),
        # a variant not listed in ROWS: not shown
        dict(method="fora_n2", macs_c1_T=1.43, macs_total_T=2.86, speedup=1.6, fid=140.0,
             clip=0.1, psnr=20.0, lpips=0.3, **prov),
    ])


@pytest.fixture()
def rendered(tmp_path):
    ours = _ours()
    ours = ours[ours["method"] != "diffsparse_r43"]  # a listed row missing from ours
    notes = ["DiT's 11.44 T counts the CFG batch of 2.",
             "Tiny-model numbers are not comparable to the paper's."]
    df = render_table("Table 1: PixArt-α 256px", ours, PAPER_DIR / "table1.csv", ROWS, COLUMNS,
                      tmp_path / "table1", notes=notes)
    return df, tmp_path / "table1", notes


def _md_rows(md: str) -> dict[str, list[str]]:
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| :---") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0]] = cells[1:]
    return out


def _md_header(md: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith("| Method"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


# ---------------------------------------------------------------------------------------------
# render_table


def test_writes_three_files_and_no_temp_files(rendered):
    _, prefix, _ = rendered
    names = sorted(p.name for p in prefix.parent.iterdir())
    assert names == ["table1.csv", "table1.md", "table1.tex"]


def test_paper_values_beside_ours_in_markdown(rendered):
    _, prefix, _ = rendered
    md = (prefix.parent / "table1.md").read_text(encoding="utf-8")
    header = _md_header(md)
    assert header == ["Method", "MACs (paper)", "MACs (ours)", "MACs total (ours)",
                      "Speedup (paper)", "Speedup (ours)", "FID (paper)", "FID (ours)",
                      "CLIP (paper)", "CLIP (ours)", "PSNR (ours)", "LPIPS (ours)"]
    rows = _md_rows(md)
    assert list(rows) == ["PixArt-α", "ToCa", "DiffSparse (R = 43%)", "ours_only 10%"]
    cell = dict(zip(header[1:], rows["PixArt-α"]))
    assert cell["MACs (paper)"] == "2.860 T"
    assert cell["MACs (ours)"] == "2.857 T"
    assert cell["MACs total (ours)"] == "5.714 T"
    assert cell["Speedup (paper)"] == "1.00×"
    assert cell["FID (paper)"] == "28.20"
    assert cell["FID (ours)"] == "123.46"
    assert cell["CLIP (paper)"] == "0.163"
    assert cell["CLIP (ours)"] == "0.111"
    assert cell["LPIPS (ours)"] == "0.0000"  # zero is a value, not missing
    toca = dict(zip(header[1:], rows["ToCa"]))
    assert toca["Speedup (paper)"] == "1.75×" and toca["Speedup (ours)"] == "1.71×"
    assert toca["FID (paper)"] == "28.35" and toca["FID (ours)"] == "130.25"
    assert toca["PSNR (ours)"] == "24.57" and toca["LPIPS (ours)"] == "0.1235"
    assert "fora_n2" not in md and "FORA" not in md  # only the requested rows are shown


def test_missing_row_renders_as_dash_not_dropped(rendered):
    df, prefix, _ = rendered
    md = (prefix.parent / "table1.md").read_text(encoding="utf-8")
    header = _md_header(md)
    row = dict(zip(header[1:], _md_rows(md)["DiffSparse (R = 43%)"]))
    # paper values still shown, ours missing
    assert row["FID (paper)"] == "26.91" and row["Speedup (paper)"] == "1.74×"
    for col in ("MACs (ours)", "MACs total (ours)", "Speedup (ours)", "FID (ours)",
                "CLIP (ours)", "PSNR (ours)", "LPIPS (ours)"):
        assert row[col] == MISSING == "—"
    # a row with no paper counterpart: paper cells are missing too
    mine = dict(zip(header[1:], _md_rows(md)["ours_only 10%"]))
    assert mine["FID (paper)"] == "—" and mine["FID (ours)"] == "—"
    rec = df.set_index("method").loc["diffsparse_r43"]
    assert not rec["in_ours"] and math.isnan(rec["fid_ours"]) and rec["fid_paper"] == 26.91
    tex = (prefix.parent / "table1.tex").read_text(encoding="utf-8")
    line = next(l for l in tex.splitlines() if l.startswith("DiffSparse"))
    assert "---" in line and "26.91" in line


def test_csv_round_trips_with_pandas(rendered):
    df, prefix, _ = rendered
    back = pd.read_csv(prefix.parent / "table1.csv")
    assert list(back.columns) == list(df.columns)
    assert list(back.columns[:4]) == ["method", "label", "paper_row", "in_ours"]
    assert list(back.columns[-4:]) == list(PROVENANCE_COLUMNS)
    assert back["method"].tolist() == ["none", "toca", "diffsparse_r43", "my_variant"]
    assert back["in_ours"].tolist() == [True, True, False, False]
    num = [c for c in df.columns if c.endswith(("_paper", "_ours"))]
    pd.testing.assert_frame_equal(back[num], df[num], check_exact=True)
    # full-precision values, paper beside ours
    rec = back.set_index("method").loc["toca"]
    assert rec["fid_paper"] == 28.35 and rec["fid_ours"] == 130.25
    assert rec["macs_c1_T_paper"] == 1.64 and rec["macs_c1_T_ours"] == 1.6012
    assert rec["speedup_ours"] == 1.7123 and rec["lpips_ours"] == 0.12345
    assert "macs_total_T_paper" not in back.columns and "psnr_paper" not in back.columns
    assert math.isinf(back.set_index("method").loc["none", "psnr_ours"])
    # provenance reaches the CSV only
    assert rec["git_commit"] == "0123abc" and rec["model_source"] == "tiny-random"
    md = (prefix.parent / "table1.md").read_text(encoding="utf-8")
    tex = (prefix.parent / "table1.tex").read_text(encoding="utf-8")
    for text in (md, tex):
        assert "0123abc" not in text and "cfg42" not in text and "tiny-random" not in text


def test_latex_escaping_and_booktabs(rendered):
    _, prefix, notes = rendered
    tex = (prefix.parent / "table1.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\midrule" in tex
    assert r"\bottomrule" in tex and tex.rstrip().endswith(r"\end{tabular}")
    assert r"ours\_only 10\%" in tex
    assert r"DiffSparse (R = 43\%)" in tex
    assert r"PixArt-$\alpha$" in tex
    assert r"1.00$\times$" in tex and r"2.860\,T" in tex
    body = tex[tex.index(r"\begin{tabular}"):]
    assert "α" not in body and "×" not in body and "—" not in body
    for n in notes:
        assert "% Note: " + n in tex
    # every body row has as many cells as the column spec
    spec = body.splitlines()[0][len(r"\begin{tabular}{"):-1].replace(" ", "")
    for line in body.splitlines():
        if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
            stripped = line.replace(r"\&", "")
            if r"\multicolumn" in stripped:
                continue
            assert stripped.count("&") == len(spec) - 1, line


def test_latex_escape_unit():
    assert latex_escape("a_b") == r"a\_b"
    assert latex_escape("50%") == r"50\%"
    assert latex_escape("A & B") == r"A \& B"
    assert latex_escape("PixArt-α") == r"PixArt-$\alpha$"
    assert latex_escape("$x#{y}~^") == r"\$x\#\{y\}\textasciitilde{}\textasciicircum{}"
    assert latex_escape("a\\b") == r"a\textbackslash{}b"


def test_notes_under_markdown(rendered):
    _, prefix, notes = rendered
    md = (prefix.parent / "table1.md").read_text(encoding="utf-8")
    table_end = max(i for i, l in enumerate(md.splitlines()) if l.startswith("|"))
    tail = "\n".join(md.splitlines()[table_end + 1:])
    for n in notes:
        assert f"- {n}" in tail


def test_latex_notes_below(tmp_path):
    render_table("t", _ours(), PAPER_DIR / "table1.csv", ROWS[:1], ["fid"], tmp_path / "t",
                 notes=["Tiny models: 10% of _anything_"], latex_notes="below")
    tex = (tmp_path / "t.tex").read_text(encoding="utf-8")
    after = tex[tex.index(r"\end{tabular}"):]
    assert r"Tiny models: 10\% of \_anything\_" in after


def test_format_value():
    assert format_value("macs_c1_T", 2.86) == "2.860 T"
    assert format_value("macs_total_T", 11.4393) == "11.439 T"
    assert format_value("speedup", 1.7449) == "1.74×"
    assert format_value("fid", 28.2) == "28.20"
    assert format_value("clip", 0.1634) == "0.163"
    assert format_value("psnr", 31.234) == "31.23"
    assert format_value("lpips", 0.123456) == "0.1235"
    assert format_value("fid", float("nan")) == "—"
    assert format_value("fid", None) == "—"
    assert format_value("speedup", 1.5, latex=True) == r"1.50$\times$"
    assert format_value("fid", None, latex=True) == "---"


def test_ours_only_metric_has_no_paper_column_and_override(tmp_path):
    # DiT: the paper's 11.44 T counts the CFG batch of 2 -> compare with 2 * macs_c1_T
    ours = pd.DataFrame([dict(method="none", macs_c1_T=5.7197, macs_total_T=11.862, fid=2.3)])
    ours["macs_c1_cfg_T"] = 2 * ours["macs_c1_T"]
    with pytest.warns(UserWarning, match="sfid"):  # a requested metric absent from ours
        df = render_table("Table 2", ours, PAPER_DIR / "table2.csv",
                          [{"method": "none", "paper_row": "none", "label": "DiT-XL/2"}],
                          ["macs_c1_cfg_T", "macs_c1_T", "macs_total_T", "fid", "sfid"],
                          tmp_path / "t2",
                          paper_columns={"macs_c1_cfg_T": "macs_T", "macs_c1_T": None})
    assert "macs_c1_T_paper" not in df.columns and "macs_total_T_paper" not in df.columns
    assert df.loc[0, "macs_c1_cfg_T_paper"] == 11.44
    assert df.loc[0, "macs_c1_cfg_T_ours"] == pytest.approx(11.4394)
    assert df.loc[0, "sfid_paper"] == 4.29 and math.isnan(df.loc[0, "sfid_ours"])
    md = (tmp_path / "t2.md").read_text(encoding="utf-8")
    assert "MACs (CFG batch) (paper)" in md and "MACs (paper)" not in md
    row = _md_rows(md)["DiT-XL/2"]
    assert row[:2] == ["11.440 T", "11.439 T"]


def test_paper_metric_not_in_that_table_is_missing(tmp_path):
    # Table 4 reports no speedup: the paper column is shown, as "—"
    ours = pd.DataFrame([dict(method="toca", speedup=1.8, fid=23.0)])
    df = render_table("Table 4", ours, PAPER_DIR / "table4.csv",
                      [{"method": "toca", "paper_row": "toca"}], ["speedup", "fid"],
                      tmp_path / "t4")
    assert math.isnan(df.loc[0, "speedup_paper"]) and df.loc[0, "fid_paper"] == 23.02
    assert df.loc[0, "label"] == "ToCa"  # label falls back to the paper's
    row = _md_rows((tmp_path / "t4.md").read_text(encoding="utf-8"))["ToCa"]
    assert row == ["—", "1.80×", "23.02", "23.00"]


def test_empty_ours_keeps_all_rows(tmp_path):
    ours = pd.DataFrame(columns=["method", *COLUMNS, *PROVENANCE_COLUMNS])
    df = render_table("empty", ours, PAPER_DIR / "table1.csv", ROWS, COLUMNS, tmp_path / "e")
    assert df["method"].tolist() == [r["method"] for r in ROWS]
    assert not df["in_ours"].any()


def test_errors(tmp_path):
    ours = _ours()
    with pytest.raises(ValueError, match="paper_row"):
        render_table("x", ours, PAPER_DIR / "table1.csv",
                     [{"method": "toca", "paper_row": "t0ca"}], ["fid"], tmp_path / "x")
    with pytest.raises(ValueError, match="more than one row"):
        render_table("x", pd.concat([ours, ours]), PAPER_DIR / "table1.csv", ROWS, ["fid"],
                     tmp_path / "x")
    with pytest.raises(ValueError, match="listed twice"):
        render_table("x", ours, PAPER_DIR / "table1.csv", ROWS + ROWS[:1], ["fid"], tmp_path / "x")
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_overwrite_is_atomic_replace(tmp_path):
    prefix = tmp_path / "sub" / "t"
    render_table("t", _ours(), PAPER_DIR / "table1.csv", ROWS, ["fid"], prefix)
    first = (tmp_path / "sub" / "t.csv").read_text()
    ours = _ours()
    ours.loc[ours["method"] == "toca", "fid"] = 99.5
    render_table("t", ours, PAPER_DIR / "table1.csv", ROWS, ["fid"], prefix)
    second = (tmp_path / "sub" / "t.csv").read_text()
    assert first != second and "99.5" in second
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["t.csv", "t.md", "t.tex"]


def test_module_does_not_import_torch():
    import subprocess
    code = "import sys, dsbench.tables; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------------------------------------
# results/paper transcriptions


def test_paper_csvs_present():
    assert {p.name for p in PAPER_CSVS} >= {"table1.csv", "table2.csv", "table3.csv", "table4.csv",
                                             "table5.csv", "table6.csv", "table7.csv", "table8.csv",
                                             "table9.csv"}


@pytest.mark.parametrize("path", PAPER_CSVS, ids=lambda p: p.name)
def test_paper_csv_parses_with_unique_rows(path):
    raw = path.read_text(encoding="utf-8")
    assert not raw.startswith("#") and "<b>" not in raw and "×" not in raw
    df = pd.read_csv(path)
    assert list(df.columns[:2]) == ["row", "label"]
    assert df["row"].is_unique and df["row"].str.fullmatch(r"[a-z0-9_]+").all()
    if path.stem not in ABLATION_TABLES:
        assert df["row"].iloc[0] == "none"  # the unaccelerated baseline comes first
    metrics = df.columns[2:]
    assert len(metrics) >= 1
    for col in metrics:
        assert pd.api.types.is_float_dtype(df[col]), (path.name, col)
        assert df[col].notna().all(), (path.name, col)
    if "speedup" in df.columns:
        assert df.loc[0, "speedup"] == 1.0
    load_paper_table(path)  # the loader's own validation


def _paper(name: str) -> pd.DataFrame:
    return load_paper_table(PAPER_DIR / name)


def test_table1_values():
    t = _paper("table1.csv")
    assert t["row"].tolist() == ["none", "steps_50", "fora_n2", "deepcache_n2", "dicache", "toca",
                                 "duca", "taylorseer_n2", "diffsparse_r43", "diffsparse_r54"]
    r = t.loc["none"]
    assert (r["macs_T"], r["speedup"], r["fid"], r["clip"]) == (2.86, 1.00, 28.20, 0.163)
    assert r["label"] == "PixArt-α"
    assert tuple(t.loc["steps_50", ["macs_T", "speedup", "fid", "clip"]]) == (1.43, 1.74, 37.57, 0.158)
    assert tuple(t.loc["deepcache_n2", ["macs_T", "speedup", "fid"]]) == (1.48, 1.61, 29.61)
    assert tuple(t.loc["toca", ["macs_T", "speedup", "fid", "clip"]]) == (1.64, 1.75, 28.35, 0.164)
    assert tuple(t.loc["taylorseer_n2", ["macs_T", "speedup", "fid"]]) == (1.57, 1.83, 29.08)
    assert tuple(t.loc["diffsparse_r43", ["macs_T", "speedup", "fid"]]) == (1.64, 1.74, 26.91)
    assert tuple(t.loc["diffsparse_r54", ["macs_T", "speedup", "fid"]]) == (1.30, 1.91, 27.79)


def test_table2_values():
    t = _paper("table2.csv")
    assert t["row"].tolist() == ["none", "steps_80", "steps_50", "steps_40", "fora", "toca",
                                 "duca", "diffsparse"]
    cols = ["macs_T", "speedup", "fid", "sfid", "precision", "recall"]
    assert tuple(t.loc["none", cols]) == (11.44, 1.00, 2.26, 4.29, 0.80, 0.60)
    assert tuple(t.loc["steps_50", cols]) == (5.73, 1.96, 3.01, 4.60, 0.79, 0.58)
    assert tuple(t.loc["fora", cols]) == (4.13, 2.12, 3.88, 6.74, 0.79, 0.56)
    assert tuple(t.loc["toca", cols]) == (4.97, 2.09, 3.05, 4.70, 0.79, 0.57)
    assert tuple(t.loc["diffsparse", cols]) == (4.97, 2.07, 2.81, 4.61, 0.80, 0.59)
    # DDIM-K rows: MACs scale with the step count (K/50 of 11.44 T). The paper prints 9.14 and
    # 5.73 where 9.15 and 5.72 would be exact: off by one in the last digit (see README).
    for key, k in (("steps_80", 40), ("steps_50", 25), ("steps_40", 20)):
        assert t.loc[key, "macs_T"] == pytest.approx(11.44 * k / 50, abs=0.015)


def test_table3_values():
    t = _paper("table3.csv")
    assert t["row"].tolist() == ["none", "steps_50", "duca_r54", "duca_r59", "diffsparse"]
    assert tuple(t.loc["none", ["macs_T", "speedup", "vbench"]]) == (43.866, 1.00, 43.82)
    assert tuple(t.loc["duca_r54", ["macs_T", "speedup", "vbench"]]) == (20.332, 1.69, 43.56)
    assert tuple(t.loc["diffsparse", ["macs_T", "speedup", "vbench"]]) == (18.124, 2.05, 43.83)


def test_table4_values():
    t = _paper("table4.csv")
    assert list(t.columns) == ["row", "label", "macs_T", "fid", "clip"]
    assert tuple(t.loc["none", ["macs_T", "fid", "clip"]]) == (10.851, 21.95, 0.164)
    assert tuple(t.loc["toca", ["macs_T", "fid", "clip"]]) == (5.993, 23.02, 0.165)
    assert tuple(t.loc["diffsparse", ["macs_T", "fid", "clip"]]) == (5.986, 22.42, 0.165)


def test_table9_values():
    t = _paper("table9.csv")
    assert list(t.columns) == ["row", "label", "macs_T", "image_reward"]
    assert tuple(t.loc["none", ["macs_T", "image_reward"]]) == (13.247, 1.064)
    assert tuple(t.loc["steps_75", ["macs_T", "image_reward"]]) == (9.936, 1.063)
    assert tuple(t.loc["diffsparse", ["macs_T", "image_reward"]]) == (7.316, 1.184)
    # the "1.81x speedup" of appendix A.4 is the MACs ratio
    assert t.loc["none", "macs_T"] / t.loc["diffsparse", "macs_T"] == pytest.approx(1.81, abs=0.005)


def test_table5_values():
    """Token score: the paper's two columns (Base. = ToCa's allocation, w/ DiffSparse) as two rows per score."""
    t = _paper("table5.csv")
    assert list(t.columns) == ["row", "label", "fid"]
    assert t["row"].tolist() == ["norm_base", "norm_diffsparse", "similarity_base", "similarity_diffsparse",
                                 "attention_base", "attention_diffsparse"]
    assert dict(t["fid"]) == {"norm_base": 29.05, "norm_diffsparse": 28.89, "similarity_base": 29.00,
                              "similarity_diffsparse": 28.07, "attention_base": 28.35,
                              "attention_diffsparse": 26.91}
    # the printed gains: (-0.16), (-0.93), (-1.44)
    for score, gain in (("norm", -0.16), ("similarity", -0.93), ("attention", -1.44)):
        assert t.loc[f"{score}_diffsparse", "fid"] - t.loc[f"{score}_base", "fid"] == pytest.approx(gain, abs=1e-9)
    # the attention rows are Table 1's ToCa and DiffSparse (R = 43%)
    t1 = _paper("table1.csv")
    assert t.loc["attention_base", "fid"] == t1.loc["toca", "fid"]
    assert t.loc["attention_diffsparse", "fid"] == t1.loc["diffsparse_r43", "fid"]


def test_table6_to_8_values():
    t6, t7, t8 = _paper("table6.csv"), _paper("table7.csv"), _paper("table8.csv")
    for t in (t6, t7, t8):
        assert list(t.columns) == ["row", "label", "fid", "clip"]
    assert {k: tuple(v) for k, v in t6[["fid", "clip"]].iterrows()} == \
        {"l2": (27.68, 0.164), "ssim": (27.46, 0.164), "lpips": (26.91, 0.164)}
    assert {k: tuple(v) for k, v in t7[["fid", "clip"]].iterrows()} == {
        "interval_0_1": (27.96, 0.163), "interval_0_125": (27.91, 0.163), "interval_0_25": (26.91, 0.164),
        "interval_0_5": (27.54, 0.164), "interval_1": (28.22, 0.162)}
    assert {k: tuple(v) for k, v in t8[["fid", "clip"]].iterrows()} == {
        "delta_0": (27.40, 0.163), "delta_5": (27.01, 0.164), "delta_10": (26.91, 0.164),
        "delta_20": (26.95, 0.164)}
    # Table 7's |S| column lives in the label; it is the size of the candidate grid of that interval
    from methods.diffsparse.schedule import candidates

    for key, label in t7["label"].items():
        interval, size = label.split(" (|S| = ")
        assert key == "interval_" + interval.replace(".", "_").removesuffix("_0")
        assert len(candidates(float(interval))) == int(size.rstrip(")"))
    # every ablation's default row (attention, LPIPS, 0.25, δ = 10) is Table 1's DiffSparse (R = 43%)
    default = _paper("table1.csv").loc["diffsparse_r43", "fid"]
    assert t6.loc["lpips", "fid"] == t7.loc["interval_0_25", "fid"] == t8.loc["delta_10", "fid"] == default


def test_paper_text_claims_consistent():
    """Numbers quoted in the paper's prose agree with the transcribed tables."""
    t1, t2 = _paper("table1.csv"), _paper("table2.csv")
    # "+5.1% improvement in FID of DiffSparse over ToCa"
    assert (t1.loc["toca", "fid"] - t1.loc["diffsparse_r43", "fid"]) / t1.loc["toca", "fid"] \
        == pytest.approx(0.051, abs=0.001)
    # "DiffSparse improves the FID from 3.05 to 2.81, outperforming ToCa by 8%"
    assert (t2.loc["toca", "fid"], t2.loc["diffsparse", "fid"]) == (3.05, 2.81)
    assert (3.05 - 2.81) / 3.05 == pytest.approx(0.08, abs=0.005)


def test_rank_agreement_is_spearman_over_rows_with_both_values(tmp_path):
    from dsbench.tables import rank_agreement

    nan = math.nan
    rho, n = rank_agreement(pd.Series([1.0, 2.0, 3.0, 4.0, nan]), pd.Series([10.0, 30.0, 20.0, 40.0, 5.0]))
    assert n == 4 and rho == pytest.approx(0.8)          # 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/60
    assert math.isnan(rank_agreement(pd.Series([1.0, 2.0]), pd.Series([2.0, 1.0]))[0])      # under 3 rows
    rho, n = rank_agreement(pd.Series([1.0, 1.0, 1.0]), pd.Series([1.0, 2.0, 3.0]))       # a constant column
    assert math.isnan(rho) and n == 3
    ours = pd.DataFrame([dict(method="none", fid=10.0), dict(method="toca", fid=12.0),
                         dict(method="duca", fid=11.0), dict(method="fora_n2", fid=15.0)])
    rows = [{"method": m, "paper_row": m} for m in ("none", "toca", "duca", "fora_n2")]
    render_table("t", ours, PAPER_DIR / "table1.csv", rows, ["fid"], tmp_path / "t")
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    # paper FID: none 28.20, toca 28.35, duca 27.98, fora 29.67 -> ranks 2,3,1,4; ours 1,3,2,4: ρ = 0.8
    assert "Spearman's ρ over the rows with both values: FID +0.80 (4 rows)." in md


# ---------------------------------------------------------------------------------------------
# Table 2's MACs: the paper's 11.44 T counts both CFG branches


def test_table2_renders_both_macs_conventions_with_the_papers_figure_beside_the_cfg_inclusive_one(tmp_path):
    """`dsbench render` with config.yaml's table2 (its paper_columns and column_titles) on a fake results
    CSV: our macs_c1 (one CFG branch, 5.72 T) and twice it (both branches, 11.44 T) side by side, each
    labelled, and the paper's 11.44 beside the CFG-inclusive figure, not beside 5.72."""
    from dsbench.cli import main

    prov = dict(git_commit="0123abc", config_hash="cfg42", device="cpu", model_source="meta")
    pd.DataFrame([
        dict(method="none", macs_c1_T=5.7197, macs_total_T=11.8666, speedup=1.0, fid=2.30, **prov),
        dict(method="steps_50", macs_c1_T=2.8599, macs_total_T=5.9333, speedup=1.9, fid=3.1, **prov),
    ]).to_csv(tmp_path / "dit_xl_2_256.csv", index=False)
    with pytest.warns(UserWarning, match="not in ours"):  # sfid, psnr ... absent from the fake CSV
        assert main(["render", "--config", str(ROOT / "config.yaml"), "--table", "table2",
                     "--root", str(tmp_path), "--paper-dir", str(PAPER_DIR)]) == 0
    md = (tmp_path / "tables" / "table2.md").read_text(encoding="utf-8")
    header = _md_header(md)
    assert header[1:5] == ["MACs, 1 CFG branch (ours)", "MACs, 2 CFG branches (paper)",
                           "MACs, 2 CFG branches (ours)", "MACs total (ours)"]
    assert "MACs, 1 CFG branch (paper)" not in header
    row = dict(zip(header[1:], _md_rows(md)["DDIM-50 steps"]))
    assert row["MACs, 1 CFG branch (ours)"] == "5.720 T"
    assert row["MACs, 2 CFG branches (paper)"] == "11.440 T"
    assert row["MACs, 2 CFG branches (ours)"] == "11.439 T"
    half = dict(zip(header[1:], _md_rows(md)["DDIM-25 steps"]))
    assert (half["MACs, 2 CFG branches (paper)"], half["MACs, 2 CFG branches (ours)"]) == ("5.730 T", "5.720 T")
    df = pd.read_csv(tmp_path / "tables" / "table2.csv")
    assert "macs_c1_T_paper" not in df.columns
    assert df.loc[0, "macs_c1_cfg_T_paper"] == 11.44
    assert df.loc[0, "macs_c1_cfg_T_ours"] == pytest.approx(2 * 5.7197)
    tex = (tmp_path / "tables" / "table2.tex").read_text(encoding="utf-8")
    assert r"\multicolumn{2}{c}{MACs, 2 CFG branches}" in tex and r"\multicolumn{1}{c}{MACs, 1 CFG branch}" in tex


def test_paper_columns_and_titles_are_checked():
    import copy

    import yaml

    from dsbench import config as dsconfig
    from dsbench.tables import PAPER_METRICS, add_derived_columns

    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    for field, value, match in [
        ("paper_columns", {"macs_c1_cfg_T": "macs"}, "paper_columns"),            # not a paper column
        ("paper_columns", {"fid_cfg": "fid"}, "not among the table's columns"),   # not one of ours
        ("column_titles", {"lpips_x": "LPIPS"}, "not among the table's columns"),
    ]:
        cfg = copy.deepcopy(base)
        cfg["tables"]["table2"][field] = value
        with pytest.raises(dsconfig.ConfigError, match=match):
            dsconfig.validate(cfg)
    schema = yaml.safe_load(dsconfig.SCHEMA.read_text())
    allowed = schema["$defs"]["table"]["properties"]["paper_columns"]["additionalProperties"]["enum"]
    assert set(allowed) == {*PAPER_METRICS, None}
    with pytest.raises(ValueError, match="paper column"):
        render_table("x", _ours(), PAPER_DIR / "table1.csv", ROWS, ["fid"], "unused", paper_columns={"fid": "FID"})
    ours = add_derived_columns(pd.DataFrame([dict(method="none", macs_c1_T=1.5)]), 2)
    assert ours.loc[0, "macs_c1_cfg_T"] == 3.0
    assert add_derived_columns(pd.DataFrame([dict(method="none", macs_c1_T=1.5)]), 1).loc[0, "macs_c1_cfg_T"] == 1.5


def test_bootstrap_intervals_render_beside_values_and_unresolved_rankings_are_named(tmp_path):
    ours = pd.DataFrame([
        dict(method="none", fid=100.0, fid_ci=5.0, psnr=100.0, psnr_ci=0.0, ci_level=0.95, n_samples=64, fidelity_n=64),
        dict(method="a", fid=90.0, fid_ci=4.0, psnr=30.0, psnr_ci=0.5, ci_level=0.95, n_samples=64, fidelity_n=64),
        dict(method="b", fid=96.0, fid_ci=3.0, psnr=25.0, psnr_ci=0.5, ci_level=0.95, n_samples=64, fidelity_n=64),
    ])
    rows = [{"method": "none", "label": "Full"}, {"method": "a", "label": "A"}, {"method": "b", "label": "B"}]
    render_table("T", ours, columns=["fid", "psnr"], rows=rows, paper_csv=None, out_prefix=tmp_path / "t")
    md = (tmp_path / "t.md").read_text()
    assert "| A | — | 90.00 ±4.00 | 30.00 ±0.50 |" in md
    assert "95% percentile-bootstrap half-width over the samples: 64 samples" in md
    # FID: A's [86, 94] overlaps B's [93, 99], not the full model's [95, 105]
    assert "FID: the best row, A (90.00 ±4.00), is not resolved from B (their intervals overlap)" in md
    # PSNR: `none` is left out (its 100 dB is itself); A's [29.5, 30.5] is clear of B's [24.5, 25.5]
    assert "PSNR: the best row, A (30.00 ±0.50), is resolved from every other row" in md
    assert r"90.00\,$\pm$4.00" in (tmp_path / "t.tex").read_text()
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["fid_ci_ours"].tolist() == [5.0, 4.0, 3.0]


def test_tables_without_intervals_render_as_before(tmp_path):
    ours = pd.DataFrame([dict(method="none", fid=100.0), dict(method="a", fid=90.0)])
    render_table("T", ours, columns=["fid"], rows=[{"method": "none"}, {"method": "a"}], paper_csv=None,
                 out_prefix=tmp_path / "t")
    md = (tmp_path / "t.md").read_text()
    assert "±" not in md and "bootstrap" not in md
