"""Figure 3 of the paper: where a DiffSparse schedule recomputes tokens.

One heatmap panel per sub-layer (self-attention, cross-attention, MLP): x is the sampling step
0 … T−1, y is the block index (block 0 at the bottom), colour is the fraction of tokens recomputed,
1 − sparsity, on fixed limits [0, 1] with one shared colorbar. Step 0 is drawn as 1 (it always
computes in full). It renders any `Schedule`, trained or searched. Uses `matplotlib.figure.Figure`
directly (Agg canvas, no pyplot global state) and writes the PNG atomically.
"""
from __future__ import annotations

from pathlib import Path

from dsbench.io import atomic_path

KIND_TITLES = {"self_attn": "self-attention", "cross_attn": "cross-attention", "mlp": "MLP"}


def schedule_heatmap(schedule, kinds, out_path, title=None, dpi: int = 150) -> Path:
    """Draw `schedule` (a methods.diffsparse.schedule.Schedule) to the PNG `out_path`; returns it.

    `kinds` is aligned with `schedule.sublayers`: "self_attn" | "cross_attn" | "mlp" each.
    """
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = tuple(kinds)
    if len(kinds) != len(schedule.sublayers):
        raise ValueError(f"kinds {kinds} has {len(kinds)} entries but schedule.sublayers "
                         f"{tuple(schedule.sublayers)} has {len(schedule.sublayers)}")
    unknown = [k for k in kinds if k not in KIND_TITLES]
    if unknown:
        raise ValueError(f"unknown sub-layer kind(s) {unknown}; expected one of {sorted(KIND_TITLES)}")

    T, B, L = schedule.steps, schedule.blocks, len(kinds)
    keep = torch.ones(T, B, L, dtype=torch.float64)
    keep[1:] = 1.0 - schedule.sparsity
    keep = keep.numpy()
    if title is None:
        model = schedule.meta.get("model", "DiffSparse schedule")
        ratio = schedule.meta.get("ratio")
        title = (f"{model}: T={T}, mean sparsity {schedule.mean_sparsity():.2f}"
                 + (f", R={ratio}" if ratio is not None else ""))

    fig = Figure(figsize=(1.0 + 3.2 * L, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, L, squeeze=False, sharey=True)[0]
    im = None
    for j, (ax, kind) in enumerate(zip(axes, kinds)):
        im = ax.imshow(keep[:, :, j].T, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                       interpolation="nearest", extent=(-0.5, T - 0.5, -0.5, B - 0.5))
        ax.set_title(f"{KIND_TITLES[kind]} ({schedule.sublayers[j]})")
        ax.set_xlabel("sampling step")
    axes[0].set_ylabel("block index (0 = bottom)")
    fig.colorbar(im, ax=list(axes), label="fraction of tokens recomputed")
    fig.suptitle(title)

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_path
