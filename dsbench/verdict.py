"""The claim's verdict for one model: is each budget target (a variant other rows are matched to, e.g.
DiffSparse R = 43 %) on the Pareto front, and which of its differences to the rows at its budget do the
bootstrap intervals resolve. Read from the model's CSV (dsbench/aggregate.py), written as Markdown."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dsbench.io import write_text
from dsbench.pareto import pareto_front

# (quality column, its interval, title); lower is better for both
QUALITIES = (("lpips", "lpips_ci", "LPIPS"), ("fid", "fid_ci", "FID"))
COSTS = (("macs_c1_T", False, "MACs"), ("speedup", True, "speedup"))


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def front_line(df: pd.DataFrame, subject: str) -> str:
    """Where `subject` stands on each (cost, quality) front, naming the rows that beat it off the front."""
    parts = []
    row = df.set_index("method").loc[subject]
    for q, _, qt in QUALITIES:
        for cost, higher, ct in COSTS:
            xs, ys = df[cost].map(_num).tolist(), df[q].map(_num).tolist()
            if math.isnan(_num(row[cost])) or math.isnan(_num(row[q])):
                parts.append(f"{ct}–{qt}: no value")
                continue
            on = [df["method"].iloc[i] for i in pareto_front(xs, ys, higher)]
            if subject in on:
                parts.append(f"{ct}–{qt}: on the front")
            else:
                x, y = _num(row[cost]), _num(row[q])
                better = [m for m, a, b in zip(df["method"], xs, ys)
                          if m != subject and b <= y and (a >= x if higher else a <= x)]
                parts.append(f"{ct}–{qt}: off the front (beaten by {', '.join(better)})")
    return "; ".join(parts)


def resolved_line(df: pd.DataFrame, subject: str, peers: list[str]) -> str:
    """Per quality: the rows at `subject`'s budget it beats, loses to, or ties with, by their intervals."""
    by = df.set_index("method")
    parts = []
    for q, ci, qt in QUALITIES:
        s, hs = _num(by.loc[subject, q]), _num(by.loc[subject, ci]) if ci in by else math.nan
        if math.isnan(s) or math.isnan(hs):
            parts.append(f"{qt}: no interval")
            continue
        better, worse, tied = [], [], []
        for m in peers:
            v, h = _num(by.loc[m, q]), _num(by.loc[m, ci])
            if math.isnan(v) or math.isnan(h):
                continue
            if s + hs < v - h:
                better.append(m)
            elif v + h < s - hs:
                worse.append(m)
            else:
                tied.append(m)
        words = [f"better than {', '.join(better)}" if better else "",
                 f"worse than {', '.join(worse)}" if worse else "",
                 f"not resolved from {', '.join(tied)}" if tied else ""]
        parts.append(f"{qt} {s:.4g} ±{hs:.2g}: " + ("; ".join(w for w in words if w) or "no rows to compare"))
    return " | ".join(parts)


def budget_line(df: pd.DataFrame, subject: str, matched: list[str], tolerances: dict[str, float]) -> str:
    """The matched rows' MACs against the subject's, naming each row outside its tolerance (a run-time
    method's counted MACs move in steps, so its closest value may miss)."""
    by = df.set_index("method")
    target = _num(by.loc[subject, "macs_c1_T"])
    errors = {m: _num(by.loc[m, "macs_c1_T"]) / target - 1 for m in matched}
    worst = max(errors.items(), key=lambda kv: abs(kv[1])) if errors else None
    text = f"{len(matched)} rows matched to {subject}'s MACs" + (f", the farthest {worst[0]} at {worst[1]:+.1%}"
                                                               if worst else "")
    missed = [f"{m} ({e:+.1%}, tolerance ±{tolerances.get(m, 0.01):.1%})" for m, e in errors.items()
              if abs(e) > tolerances.get(m, 0.01)]
    return text + (f"; outside their tolerance: {', '.join(missed)}" if missed else "; all within their tolerance")


def write_verdict(csv: str | Path, matched_to: dict[str, list[str]], nearest: list[str], out: str | Path,
                  model: str, tolerances: dict[str, float] | None = None) -> str:
    """`matched_to`: budget target -> the variants matched to it; `nearest`: integer-knob rows compared at
    their own budgets (marked so); `tolerances`: each matched variant's relative MAC tolerance."""
    df = pd.read_csv(csv)
    missing = sorted({*matched_to, *(m for ms in matched_to.values() for m in ms), *nearest} - set(df["method"]))
    if missing:
        raise ValueError(f"{csv} has no rows for {missing}: rerun its aggregate")
    lines = [f"## Verdict: {model}", ""]
    by = df.set_index("method")
    for subject, matched in matched_to.items():
        lines += [f"**{subject}** ({budget_line(df, subject, matched, tolerances or {})}).", "",
                  f"- Pareto front: {front_line(df, subject)}.",
                  f"- At its budget, by the 95 % intervals: {resolved_line(df, subject, matched)}.", ""]
    if nearest:
        target = next(iter(matched_to), None)
        ref = _num(by.loc[target, "macs_c1_T"]) if target else math.nan
        lines.append("Rows at their nearest budget (an integer knob): " + ", ".join(
            f"{m} ({_num(by.loc[m, 'macs_c1_T']) / ref - 1:+.0%} MACs)" for m in nearest) + ".")
    text = "\n".join(lines).rstrip() + "\n"
    write_text(out, text)
    return text
