"""Pareto plots of one model: every method and peer a point, measured speedup (and MACs) against FID and
LPIPS to the full model, with the front of the points no other point beats on both axes."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dsbench.io import atomic_path

QUALITY = {"fid": "FID ↓", "lpips": "LPIPS to the full model ↓"}

def _costs(df: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """x axes: the measured speedup, and macs_c1 in the unit that suits the model (T, G or M)."""
    top = df["macs_c1_T"].max()
    unit = "T" if top >= 0.1 else "G" if top >= 1e-4 else "M"
    return {"speedup": ("measured speedup ↑", True), f"macs_c1_{unit}": (f"MACs (linear + conv, {unit}) ↓", False)}


def pareto_front(xs: list[float], ys: list[float], higher_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y lower is better), in x order."""
    pts = sorted((i for i in range(len(xs)) if not (math.isnan(xs[i]) or math.isnan(ys[i]))),
                 key=lambda i: (-xs[i] if higher_x_better else xs[i], ys[i]))
    front, best = [], math.inf
    for i in pts:
        if ys[i] < best:
            front.append(i)
            best = ys[i]
    return front


def pareto_figure(df: pd.DataFrame, kinds: dict[str, str], title: str):
    """A figure with one panel per (cost, quality) pair present in `df` (a results/{model}.csv);
    `kinds`: method variant -> "ours" | a peer library's name, which sets the marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = [q for q in QUALITY if q in df and df[q].notna().sum() >= 2]
    if not qualities:
        raise ValueError(f"{title}: no quality metric ({', '.join(QUALITY)}) with two or more values to plot")
    costs = _costs(df)
    fig, axes = plt.subplots(len(qualities), len(costs), figsize=(11, 4.2 * len(qualities)), squeeze=False)
    markers = {"ours": "o", "diffusers": "s", "cache-dit": "^"}
    for r, q in enumerate(qualities):
        for c, (x, (xlabel, higher)) in enumerate(costs.items()):
            ax = axes[r][c]
            xs, ys = df[x].astype(float).tolist(), df[q].astype(float).tolist()
            for kind in sorted({kinds.get(m, "ours") for m in df["method"]}):
                idx = [i for i, m in enumerate(df["method"]) if kinds.get(m, "ours") == kind]
                ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], marker=markers.get(kind, "D"), s=36,
                           label="this harness" if kind == "ours" else f"peer: {kind}", zorder=3)
            front = pareto_front(xs, ys, higher)
            ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.4", lw=1,
                    ls="--", label="Pareto front", zorder=2)
            for i, m in enumerate(df["method"]):
                if not (math.isnan(xs[i]) or math.isnan(ys[i])):
                    ax.annotate(m, (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(QUALITY[q])
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_pareto(csv: str | Path, kinds: dict[str, str], out: str | Path, title: str, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    fig = pareto_figure(pd.read_csv(csv), kinds, title)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out
