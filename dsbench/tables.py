"""Render one results table: the paper's numbers beside ours, as CSV, GitHub Markdown and LaTeX.

Pure pandas (no torch), so report generation runs anywhere.

Inputs
------
* ``ours``: one row per method variant, keyed by ``method`` (the same keys as the ``row`` column of
  ``results/paper/table*.csv``: ``none``, ``steps_50``, ``toca``, ``diffsparse_r43`` ...), with metric
  columns (``macs_c1_T``, ``macs_total_T``, ``speedup``, ``fid``, ``clip``, ``psnr``, ``lpips``, ...) and
  the provenance columns in :data:`PROVENANCE_COLUMNS`, which are carried to the CSV only.
* ``paper_csv``: a transcription in ``results/paper/`` (columns ``row``, ``label``, then paper metrics
  ``macs_T``, ``speedup``, ``fid``, ``sfid``, ``precision``, ``recall``, ``clip``, ``vbench``,
  ``image_reward``).
* ``rows``: the rows to show, in order: ``{"method": "toca", "paper_row": "toca", "label": "ToCa"}``.
  ``paper_row`` may be ``None`` (no paper value). A row whose method is absent from ``ours`` is kept
  and rendered as ``—``, never dropped.
* ``columns``: our metrics to show. A metric with a paper counterpart (:data:`PAPER_COUNTERPARTS`,
  overridden per table by ``paper_columns``) gets a "(paper)" and an "(ours)" column; any other metric
  gets "(ours)" only. ``column_titles`` renames a metric's columns in one table.
* Derived metrics (:func:`add_derived_columns`): ``macs_c1_cfg_T``, ``macs_c1_T`` times the CFG branches
  the model runs per image and step (2 with guidance, else 1).

Outputs: ``{out_prefix}.csv`` (raw numbers, machine-readable, provenance included), ``{out_prefix}.md``
and ``{out_prefix}.tex`` (booktabs tabular), each written atomically (temp file + ``os.replace``).
The CSV columns are ``method, label, paper_row, in_ours``, then ``{metric}_paper`` (paired metrics
only) and ``{metric}_ours`` per metric, then, where the table shows ``speedup`` and ``ours`` has its
spread (dsbench/aggregate.py), :data:`SPEEDUP_SPREAD_COLUMNS` with ``_ours`` and ``speedup_beyond_ideal``,
then the provenance columns.

Speedup spread: with ``speedup_lo``/``speedup_hi`` in ``ours`` (from the latency quartiles,
metrics/latency.py) the Markdown and LaTeX cells read ``1.74× (1.70–1.78)``. A row whose
``speedup_lo`` is above its MAC-ideal ``speedup_ideal`` by over 5 % (dsbench.aggregate.beyond_ideal) is marked ``†``
and named in a note: such a timing cannot be honest (the baseline was slowed by other load).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from dsbench.aggregate import SPEEDUP_FLAGS, speedup_flag
from dsbench.io import write_text

__all__ = [
    "MISSING",
    "PAPER_COUNTERPARTS",
    "PAPER_METRICS",
    "PROVENANCE_COLUMNS",
    "METRIC_FORMATS",
    "MetricFormat",
    "format_value",
    "latex_escape",
    "add_derived_columns",
    "load_paper_table",
    "render_table",
]

MISSING = "—"            # shown in Markdown for "no value" (missing run, or not reported by the paper)
LATEX_MISSING = "---"    # the same in LaTeX (an em dash without needing a UTF-8 setup)

PROVENANCE_COLUMNS: tuple[str, ...] = ("git_commit", "config_hash", "device", "model_source")
# A measured speedup's spread and MAC-ideal bound in ours (dsbench/aggregate.py), carried with the speedup.
SPEEDUP_SPREAD_COLUMNS: tuple[str, ...] = ("speedup_lo", "speedup_hi", "speedup_ideal")
BEYOND_IDEAL_MARK = "†"
# The mark of each speedup_flag (dsbench/aggregate.py) after the speedup, and its LaTeX form.
FLAG_MARKS = {"beyond_ideal": ("†", r"$^\dagger$"), "above_ideal": ("‡", r"$^\ddagger$"),
              "noisy": ("§", r"$^\S$")}

# Quality metrics with a bootstrap interval in ours (`{metric}_ci`, a half-width: metrics/bootstrap.py),
# shown as `value ±x`, and whether higher is better (for the note on which rankings the intervals resolve).
INTERVAL_METRICS: dict[str, bool] = {"fid": False, "psnr": True, "ssim": True, "lpips": False, "align": True}
FIDELITY_METRICS = ("psnr", "ssim", "lpips")   # measured against `none`, whose own row is trivially exact

# Metric columns a paper transcription may have (results/paper/*.csv).
PAPER_METRICS: tuple[str, ...] = (
    "macs_T", "speedup", "fid", "sfid", "precision", "recall", "clip", "vbench", "image_reward",
)

# Our metric -> the paper column it is compared against. The paper reports one MACs figure per
# table; by default it is paired with ``macs_c1_T`` (linear/conv layers, per image and CFG branch,
# which reproduces PixArt-alpha's 2.86 T and 10.851 T). DiT-XL/2's 11.44 T (Table 2) is that count
# times the CFG batch of 2 (attention matmuls still excluded, so it is not ``macs_total_T``): a table
# says so in the config (``tables.<name>.paper_columns: {macs_c1_T: null, macs_c1_cfg_T: macs_T}``,
# which `dsbench render` passes here as ``paper_columns``), and shows ``macs_c1_cfg_T``
# (:func:`add_derived_columns`) beside ``macs_c1_T``.
PAPER_COUNTERPARTS: dict[str, str] = {
    "macs_c1_T": "macs_T",
    "speedup": "speedup",
    "fid": "fid",
    "clip": "clip",
    "clip_toca": "clip",  # the paper's CLIP is ToCa's protocol (metrics/clip_score.py); see render_table
    "sfid": "sfid",
    "precision": "precision",
    "recall": "recall",
    "vbench": "vbench",
    "image_reward": "image_reward",
}


@dataclass(frozen=True)
class MetricFormat:
    title: str               # column title (Markdown and LaTeX, before escaping)
    decimals: int
    md_suffix: str = ""      # appended to the number in Markdown
    tex_suffix: str = ""     # appended to the number in LaTeX


METRIC_FORMATS: dict[str, MetricFormat] = {
    "macs_c1_T": MetricFormat("MACs", 3, " T", r"\,T"),
    "macs_c1_cfg_T": MetricFormat("MACs (CFG batch)", 3, " T", r"\,T"),   # macs_c1_T × CFG branches
    "macs_total_T": MetricFormat("MACs total", 3, " T", r"\,T"),
    "macs_c1_G": MetricFormat("MACs", 2, " G", r"\,G"),
    "macs_c1_M": MetricFormat("MACs", 1, " M", r"\,M"),
    "speedup": MetricFormat("Speedup", 2, "×", r"$\times$"),
    "fid": MetricFormat("FID", 2),
    "sfid": MetricFormat("sFID", 2),
    "precision": MetricFormat("Precision", 2),
    "recall": MetricFormat("Recall", 2),
    "clip": MetricFormat("CLIP", 3),
    "clip_toca": MetricFormat("CLIP ToCa-protocol", 3),
    "align": MetricFormat("Align.", 3),
    "psnr": MetricFormat("PSNR", 2),
    "ssim": MetricFormat("SSIM", 4),
    "lpips": MetricFormat("LPIPS", 4),
    "vbench": MetricFormat("VBench", 2),
    "vbench_quality": MetricFormat("VBench Quality", 2),
    "vbench_semantic": MetricFormat("VBench Semantic", 2),
    "image_reward": MetricFormat("ImageReward", 3),
    "latency_s": MetricFormat("Latency (s)", 3),
    "blocks_per_call": MetricFormat("Blocks/call", 2),   # counted: block equivalents computed per denoiser call
}
_DEFAULT_FORMAT_DECIMALS = 3


def add_derived_columns(ours: pd.DataFrame, cfg_branches: int) -> pd.DataFrame:
    """``ours`` with the metrics derived from its columns, where absent: ``macs_c1_cfg_T`` =
    ``macs_c1_T`` × ``cfg_branches`` (the CFG branches the model runs per image and step: 2 with
    guidance, as DiT-XL/2's batch of 2 or Wan's two calls, else 1), the convention of the paper's 11.44 T."""
    if cfg_branches not in (1, 2):
        raise ValueError(f"cfg_branches must be 1 or 2, not {cfg_branches!r}")
    ours = ours.copy()
    if "macs_c1_T" in ours.columns and "macs_c1_cfg_T" not in ours.columns:
        ours["macs_c1_cfg_T"] = pd.to_numeric(ours["macs_c1_T"], errors="coerce") * cfg_branches
    return ours

# ---------------------------------------------------------------------------------------------
# formatting helpers


def _metric_format(metric: str) -> MetricFormat:
    return METRIC_FORMATS.get(metric, MetricFormat(metric, _DEFAULT_FORMAT_DECIMALS))


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_value(metric: str, value: Any, *, latex: bool = False) -> str:
    """Format one number for display; missing values become ``—`` (``---`` in LaTeX)."""
    if _is_missing(value):
        return LATEX_MISSING if latex else MISSING
    fmt = _metric_format(metric)
    try:
        x = float(value)
    except (TypeError, ValueError):
        text = str(value)
        return latex_escape(text) if latex else _md_escape(text)
    if math.isinf(x):
        body = ("-" if x < 0 else "") + (r"$\infty$" if latex else "∞")
    elif x != 0 and abs(x) < 10 ** -fmt.decimals:
        # Tiny-model values (MACs in giga, FID of a seeded test network) would all print as 0.
        body = f"{x:.3g}"
    else:
        body = f"{x:.{fmt.decimals}f}"
    return body + (fmt.tex_suffix if latex else fmt.md_suffix)


# Characters with a meaning in LaTeX, plus the non-ASCII symbols that occur in method labels.
_LATEX_MAP: dict[str, str] = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "γ": r"$\gamma$",
    "δ": r"$\delta$",
    "λ": r"$\lambda$",
    "σ": r"$\sigma$",
    "τ": r"$\tau$",
    "×": r"$\times$",
    "†": r"$^\dagger$",
    "≈": r"$\approx$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "—": "---",
    "–": "--",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (``_ % & $ # { } ~ ^ \\``) and map α, ×, arrows ... to math."""
    return "".join(_LATEX_MAP.get(ch, ch) for ch in str(text))


def _md_escape(text: str) -> str:
    """Keep a cell from breaking a GitHub Markdown table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# paper tables


def load_paper_table(path: Path | str) -> pd.DataFrame:
    """Read a ``results/paper/table*.csv`` transcription, indexed by its unique ``row`` key."""
    df = pd.read_csv(path, dtype={"row": str, "label": str}, keep_default_na=False,
                     na_values=[""])
    for col in ("row", "label"):
        if col not in df.columns:
            raise ValueError(f"{path}: missing required column {col!r}")
    dup = df["row"][df["row"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate row keys {dup}")
    unknown = [c for c in df.columns if c not in ("row", "label") and c not in PAPER_METRICS]
    if unknown:
        raise ValueError(f"{path}: unknown metric columns {unknown} (expected some of {PAPER_METRICS})")
    for col in df.columns:
        if col not in ("row", "label"):
            df[col] = pd.to_numeric(df[col], errors="raise").astype(float)
    return df.set_index("row", drop=False)


# ---------------------------------------------------------------------------------------------
# atomic writes


def _atomic_write_text(path: Path, text: str) -> None:
    write_text(path, text)


def _with_suffix(prefix: Path, suffix: str) -> Path:
    # Not Path.with_suffix: a prefix such as "table1_r0.43" must keep its dot.
    return prefix.parent / (prefix.name + suffix)


# ---------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class _Col:
    metric: str
    source: str          # "paper" or "ours"
    key: str             # CSV column name
    title: str           # display title, unescaped


def _title(metric: str, titles: Mapping[str, str]) -> str:
    """A metric's display title: the table's own (``column_titles``) or its format's."""
    return titles.get(metric) or _metric_format(metric).title


def _layout(columns: Sequence[str], counterparts: Mapping[str, str | None],
            titles: Mapping[str, str]) -> list[_Col]:
    cols: list[_Col] = []
    for metric in columns:
        title = _title(metric, titles)
        if counterparts.get(metric):
            cols.append(_Col(metric, "paper", f"{metric}_paper", f"{title} (paper)"))
        cols.append(_Col(metric, "ours", f"{metric}_ours", f"{title} (ours)"))
    return cols


def _to_float(value: Any) -> float:
    if _is_missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def rank_agreement(ours: pd.Series, paper: pd.Series) -> tuple[float, int]:
    """Spearman's ρ between our values and the paper's over the rows that have both (average ranks for
    ties; pandas' own "spearman" needs scipy), and that row count; NaN under 3 rows or a constant column."""
    both = pd.DataFrame({"ours": ours, "paper": paper}).dropna()
    if len(both) < 3 or both["ours"].nunique() < 2 or both["paper"].nunique() < 2:
        return math.nan, len(both)
    return float(both["ours"].rank().corr(both["paper"].rank())), len(both)


def _agreement_note(df: pd.DataFrame, layout: list[_Col], titles: Mapping[str, str]) -> str | None:
    parts = []
    for c in layout:
        if c.source == "paper":
            rho, n = rank_agreement(df[f"{c.metric}_ours"], df[c.key])
            if not math.isnan(rho):
                parts.append(f"{_title(c.metric, titles)} {rho:+.2f} ({n} rows)")
    return ("Rank agreement with the paper, Spearman's ρ over the rows with both values: " + "; ".join(parts)
            + ".") if parts else None


def _spread_suffix(rec: Mapping[str, Any], c: _Col, *, latex: bool = False) -> str:
    """`` (lo–hi)`` after our speedup where the row has its spread, and ``†`` where it is beyond its ideal."""
    if c.metric != "speedup" or c.source != "ours" or "speedup_lo_ours" not in rec:
        return ""
    lo, hi = _to_float(rec["speedup_lo_ours"]), _to_float(rec["speedup_hi_ours"])
    text = "" if math.isnan(lo) or math.isnan(hi) else (f" ({lo:.2f}--{hi:.2f})" if latex else f" ({lo:.2f}–{hi:.2f})")
    flag = rec.get("speedup_flag") or ""
    if flag:
        text += FLAG_MARKS[flag][1 if latex else 0]
    return text


def _interval_suffix(rec: Mapping[str, Any], c: _Col, *, latex: bool = False) -> str:
    """`` ±x`` after our value where the row has its bootstrap half-width, in the metric's decimals."""
    if c.source != "ours" or f"{c.metric}_ci_ours" not in rec:
        return ""
    hw = _to_float(rec[f"{c.metric}_ci_ours"])
    if math.isnan(hw):
        return ""
    body = format_value(c.metric, hw, latex=latex)
    return rf"\,$\pm${body}" if latex else f" ±{body}"


def _interval_notes(df: pd.DataFrame, metrics: Sequence[str], titles: Mapping[str, str]) -> list[str]:
    """What ± means (level, samples), and per metric which rows the intervals do not separate from the best."""
    if not metrics:
        return []
    levels = sorted({_to_float(v) for v in df.get("ci_level_ours", []) if not math.isnan(_to_float(v))})
    counts = {k: sorted({int(v) for v in df.get(f"{k}_ours", []) if not math.isnan(_to_float(v))})
              for k in ("n_samples", "fidelity_n")}
    said = lambda ns: "/".join(str(n) for n in ns) or "?"  # noqa: E731
    level = "/".join(f"{v:.0%}" for v in levels) or "95%"
    notes = [f"± is the {level} percentile-bootstrap half-width over the samples: {said(counts['n_samples'])} "
             f"samples for FID and alignment (FID: the generated samples resampled, the reference fixed), the first "
             f"{said(counts['fidelity_n'])} pairs for PSNR, SSIM and LPIPS to the full model."]
    for metric in metrics:
        key, hw_key = f"{metric}_ours", f"{metric}_ci_ours"
        rows = df[df[key].notna() & df[hw_key].notna()]
        if metric in FIDELITY_METRICS:
            rows = rows[rows["method"] != "none"]
        if len(rows) < 2:
            continue
        best = rows.loc[rows[key].idxmax() if INTERVAL_METRICS[metric] else rows[key].idxmin()]
        lo, hi = best[key] - best[hw_key], best[key] + best[hw_key]
        tied = [r["label"] for _, r in rows.iterrows()
                if r["method"] != best["method"] and r[key] - r[hw_key] <= hi and r[key] + r[hw_key] >= lo]
        title, d = _title(metric, titles), _metric_format(metric).decimals
        head = f"{title}: the best row, {best['label']} ({best[key]:.{d}f} ±{best[hw_key]:.{d}f}),"
        notes.append(f"{head} is not resolved from {', '.join(tied)} (their intervals overlap): that ranking is "
                     "not resolved." if tied else f"{head} is resolved from every other row (no interval overlaps).")
    return notes


def _speedup_flag_notes(df: pd.DataFrame) -> list[str]:
    """One note per kind of speedup flag present, naming each flagged row with its spread and bound."""
    if "speedup_flag" not in df.columns:
        return []
    notes = []
    for flag, words in SPEEDUP_FLAGS.items():
        rows = [f"{rec['label']} ({rec['speedup_ours']:.2f}×, spread {rec['speedup_lo_ours']:.2f}–"
                f"{rec['speedup_hi_ours']:.2f}×, MAC-ideal {rec['speedup_ideal_ours']:.2f}×)"
                for _, rec in df[df["speedup_flag"] == flag].iterrows()]
        if rows:
            notes.append(f"{FLAG_MARKS[flag][0]} {words[0].upper()}{words[1:]}; rerun with the machine idle: "
                         + "; ".join(rows) + ".")
    return notes


def _with_sections(df: pd.DataFrame):
    """(row, the section title that starts before it, or None) in order: a row spec's `section` starts a
    titled group of rows (e.g. the peers' caches) that runs until the next one."""
    previous = None
    for _, rec in df.iterrows():
        section = rec.get("section")
        section = None if _is_missing(section) else section
        yield rec, section if section != previous else None
        previous = section


def _render_markdown(table_name: str, df: pd.DataFrame, layout: list[_Col],
                     notes: Sequence[str]) -> str:
    header = ["Method"] + [c.title for c in layout]
    align = [":---"] + ["---:"] * len(layout)
    lines = [f"### {_md_escape(table_name)}", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "| " + " | ".join(align) + " |"]
    any_missing = False
    for rec, section in _with_sections(df):
        if section is not None:
            lines.append("| " + " | ".join([f"*{_md_escape(section)}*"] + [""] * len(layout)) + " |")
        cells = [_md_escape(rec["label"])]
        for c in layout:
            text = format_value(c.metric, rec[c.key])
            any_missing |= text == MISSING
            cells.append(text if text == MISSING else text + _spread_suffix(rec, c) + _interval_suffix(rec, c))
        lines.append("| " + " | ".join(cells) + " |")
    foot = list(notes)
    if any_missing:
        foot.append(f"{MISSING} = no value (not run here, or not reported in the paper).")
    if foot:
        lines += ["", "Notes:", ""] + [f"- {_md_escape(n)}" for n in foot]
    return "\n".join(lines) + "\n"


def _render_latex(table_name: str, df: pd.DataFrame, layout: list[_Col], notes: Sequence[str],
                  latex_notes: str, titles: Mapping[str, str]) -> str:
    out = [f"% {' '.join(str(table_name).split())}: generated by dsbench.tables.render_table; do not edit by hand.",
           r"% Requires \usepackage{booktabs}."]
    for n in notes:
        out.append("% Note: " + " ".join(str(n).split()))

    # group consecutive columns of the same metric under one spanning title
    groups: list[tuple[str, list[_Col]]] = []
    for c in layout:
        if groups and groups[-1][0] == c.metric:
            groups[-1][1].append(c)
        else:
            groups.append((c.metric, [c]))

    spec = " ".join(["l"] + ["r" * len(cs) for _, cs in groups])
    out.append(r"\begin{tabular}{" + spec + "}")
    out.append(r"\toprule")
    top = ["Method"]
    rules = []
    col_index = 2
    for metric, cs in groups:
        title = latex_escape(_title(metric, titles))
        top.append(rf"\multicolumn{{{len(cs)}}}{{c}}{{{title}}}")
        rules.append(rf"\cmidrule(lr){{{col_index}-{col_index + len(cs) - 1}}}")
        col_index += len(cs)
    out.append(" & ".join(top) + r" \\")
    out.append(" ".join(rules))
    out.append(" & ".join([""] + [c.source for c in layout]) + r" \\")
    out.append(r"\midrule")
    for rec, section in _with_sections(df):
        if section is not None:
            out.append(r"\midrule")
            out.append(rf"\multicolumn{{{len(layout) + 1}}}{{l}}{{\emph{{{latex_escape(section)}}}}} \\")
        cells = [latex_escape(rec["label"])]
        for c in layout:
            text = format_value(c.metric, rec[c.key], latex=True)
            cells.append(text if text == LATEX_MISSING else text + _spread_suffix(rec, c, latex=True)
                         + _interval_suffix(rec, c, latex=True))
        out.append(" & ".join(cells) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    if notes and latex_notes == "below":
        body = r" \\ ".join(latex_escape(" ".join(str(n).split())) for n in notes)
        out.append(r"\par\smallskip{\footnotesize\emph{Notes.} " + body + r"\par}")
    return "\n".join(out) + "\n"


def render_table(
    table_name: str,
    ours: pd.DataFrame,
    paper_csv: Path | str | None,
    rows: list[dict],
    columns: list[str],
    out_prefix: Path | str,
    notes: list[str] | None = None,
    *,
    paper_columns: Mapping[str, str | None] | None = None,
    column_titles: Mapping[str, str] | None = None,
    latex_notes: str = "comment",
) -> pd.DataFrame:
    """Render one table comparing ``ours`` with the paper; write ``{out_prefix}.csv/.md/.tex``.

    ``notes`` are listed under the Markdown table and written into the ``.tex`` file as comments
    (``latex_notes="comment"``, the default, keeps the file a bare tabular) or also as a small
    footnote paragraph after the tabular (``latex_notes="below"``).
    ``paper_columns`` overrides :data:`PAPER_COUNTERPARTS` per metric (``None`` unpairs a metric; a
    value must be one of :data:`PAPER_METRICS`); ``column_titles`` replaces a metric's display title
    (e.g. naming the CFG convention of each MACs column).
    Returns the table as written to the CSV (one row per entry of ``rows``, in order).
    """
    if latex_notes not in ("comment", "below"):
        raise ValueError(f"latex_notes must be 'comment' or 'below', not {latex_notes!r}")
    notes = [str(n) for n in (notes or [])]
    columns = list(columns)
    reserved = {"method", "label", "paper_row", "in_ours", "section", *PROVENANCE_COLUMNS}
    bad = [c for c in columns if c in reserved]
    if bad:
        raise ValueError(f"columns must be metrics, got reserved names {bad}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate metrics in columns: {columns}")

    bad = {k: v for k, v in (paper_columns or {}).items() if v is not None and v not in PAPER_METRICS}
    if bad:
        raise ValueError(f"paper_columns {bad}: a paper column must be one of {PAPER_METRICS} (or None)")
    titles = {str(k): str(v) for k, v in (column_titles or {}).items()}
    counterparts: dict[str, str | None] = dict(PAPER_COUNTERPARTS)
    if "clip_toca" in columns and "clip" not in (paper_columns or {}):
        counterparts["clip"] = None  # the paper's CLIP number sits beside the protocol that made it
    counterparts.update(paper_columns or {})

    # ours, keyed by method
    if "method" not in ours.columns:
        raise ValueError("ours must have a 'method' column")
    dup = ours["method"][ours["method"].duplicated()].tolist()
    if dup:
        raise ValueError(f"ours has more than one row for methods {dup}")
    ours_by_method = {str(m): rec for m, rec in zip(ours["method"], ours.to_dict("records"))}
    absent = [c for c in columns if c not in ours.columns]
    if absent and len(ours):
        warnings.warn(f"{table_name}: metrics {absent} are not in ours; rendered as {MISSING}",
                      stacklevel=2)

    # paper
    paper = load_paper_table(paper_csv) if paper_csv is not None else None

    # rows
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    layout = _layout(columns, counterparts, titles)
    # The speedup's spread and MAC-ideal bound travel with it where ours has them (older CSVs do not).
    spread = "speedup" in columns and {"speedup_lo", "speedup_hi"} <= set(ours.columns)
    # Bootstrap half-widths travel with their metric where ours has them (CSVs from before them do not).
    intervals = [m for m in columns if m in INTERVAL_METRICS and f"{m}_ci" in ours.columns]
    interval_cols = [f"{m}_ci" for m in intervals] + (["ci_level", "n_samples", "fidelity_n"] if intervals else [])
    for spec in rows:
        if "method" not in spec or spec["method"] in (None, ""):
            raise ValueError(f"row spec without a method: {spec!r}")
        method = str(spec["method"])
        if method in seen:
            raise ValueError(f"method {method!r} listed twice in rows")
        seen.add(method)
        paper_row = spec.get("paper_row")
        paper_row = None if _is_missing(paper_row) else str(paper_row)
        paper_rec = None
        if paper_row is not None:
            if paper is None:
                raise ValueError(f"row {method!r} names paper_row {paper_row!r} but no paper_csv")
            if paper_row not in paper.index:
                raise ValueError(f"paper_row {paper_row!r} not in {paper_csv} "
                                 f"(keys: {list(paper.index)})")
            paper_rec = paper.loc[paper_row]
        ours_rec = ours_by_method.get(method)
        label = spec.get("label")
        if _is_missing(label) or label == "":
            label = paper_rec["label"] if paper_rec is not None else method

        section = spec.get("section", records[-1]["section"] if records else None)
        rec: dict[str, Any] = {"method": method, "label": str(label), "paper_row": paper_row,
                               "in_ours": ours_rec is not None, "section": section}
        for c in layout:
            if c.source == "paper":
                pcol = counterparts[c.metric]
                value = paper_rec[pcol] if (paper_rec is not None and pcol in paper_rec.index) else None
            else:
                value = ours_rec.get(c.metric) if ours_rec is not None else None
            rec[c.key] = _to_float(value)
        if spread:
            for k in SPEEDUP_SPREAD_COLUMNS:
                rec[f"{k}_ours"] = _to_float(ours_rec.get(k)) if ours_rec is not None else math.nan
            rec["speedup_flag"] = speedup_flag(rec["speedup_ours"] if "speedup_ours" in rec else math.nan,
                                               rec["speedup_lo_ours"], rec["speedup_hi_ours"], rec["speedup_ideal_ours"])
            rec["speedup_beyond_ideal"] = rec["speedup_flag"] == "beyond_ideal"
        for k in interval_cols:
            rec[f"{k}_ours"] = _to_float(ours_rec.get(k)) if ours_rec is not None else math.nan
        for p in PROVENANCE_COLUMNS:
            value = ours_rec.get(p) if ours_rec is not None else None
            rec[p] = None if _is_missing(value) else str(value)
        records.append(rec)

    spread_cols = [f"{k}_ours" for k in SPEEDUP_SPREAD_COLUMNS] + ["speedup_beyond_ideal", "speedup_flag"] \
        if spread else []
    out_cols = ["method", "label", "paper_row", "in_ours", "section"] + [c.key for c in layout] + spread_cols \
        + [f"{k}_ours" for k in interval_cols] + list(PROVENANCE_COLUMNS)
    df = pd.DataFrame.from_records(records, columns=out_cols)
    for c in layout:
        df[c.key] = df[c.key].astype(float)
    df["in_ours"] = df["in_ours"].astype(bool)
    if spread:
        df["speedup_beyond_ideal"] = df["speedup_beyond_ideal"].astype(bool)

    agreement = _agreement_note(df, layout, titles)
    notes = notes + [agreement] if agreement else notes
    notes = notes + _speedup_flag_notes(df) + _interval_notes(df, intervals, titles)
    # render everything before writing anything, then write each file atomically
    csv_text = df.to_csv(index=False, lineterminator="\n")
    md_text = _render_markdown(table_name, df, layout, notes)
    tex_text = _render_latex(table_name, df, layout, notes, latex_notes, titles)
    prefix = Path(out_prefix)
    _atomic_write_text(_with_suffix(prefix, ".csv"), csv_text)
    _atomic_write_text(_with_suffix(prefix, ".md"), md_text)
    _atomic_write_text(_with_suffix(prefix, ".tex"), tex_text)
    return df
