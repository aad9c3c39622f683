"""Figure 3 of the paper: where a DiffSparse schedule reuses its cache.

One heatmap panel per sub-layer (self-attention, cross-attention, MLP), on fixed colour limits [0, 1]
with one shared colorbar. Two views:

* ``paper`` (the default), as the paper draws Figure 3: x is the layer (block index 0 … B−1, left to
  right), y is the sampling step 1 … T−1 (step 1 at the top), colour is the sparsity, the fraction of
  tokens that reuse the cache (viridis: blue = 0, every token recomputed; yellow = 1, all reused). Step 0
  is left out, as the paper leaves it out: it always computes in full.
* ``steps``: x is the sampling step 0 … T−1, y is the block index (block 0 at the bottom), colour is the
  fraction of tokens recomputed, 1 − sparsity, with step 0 drawn as 1.

It renders any `Schedule`, trained or searched. Uses `matplotlib.figure.Figure` directly (Agg canvas,
no pyplot global state) and writes the PNG atomically.
"""
from __future__ import annotations

from pathlib import Path

from dsbench.io import atomic_path

KIND_TITLES = {"self_attn": "self-attention", "cross_attn": "cross-attention", "mlp": "MLP"}
VIEWS = ("paper", "steps")


def heatmap_figure(schedule, kinds, title=None, view: str = "paper"):
    """The Figure-3 heatmaps of `schedule` (a methods.diffsparse.schedule.Schedule) as a matplotlib Figure:
    one panel per (block group, sub-layer).

    `kinds` is aligned with `schedule.sublayers`: "self_attn" | "cross_attn" | "mlp" each; for a schedule
    of several block groups, a mapping group name -> its kinds. `view` is "paper" (x layers, y steps
    1 … T−1, colour sparsity) or "steps" (x steps 0 … T−1, y blocks, colour fraction recomputed); see the
    module docstring.
    """
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if view not in VIEWS:
        raise ValueError(f"unknown heatmap view {view!r}; expected one of {VIEWS}")
    groups = schedule.group_units()
    by_group = dict(kinds) if isinstance(kinds, dict) else {groups[0][0]: tuple(kinds)}
    panels = []   # (title, units of one sub-layer (T−1, blocks))
    for name, sublayers, units in groups:
        group_kinds = tuple(by_group.get(name, ()))
        if len(group_kinds) != len(sublayers):
            raise ValueError(f"kinds {group_kinds} has {len(group_kinds)} entries but schedule.sublayers "
                             f"{tuple(sublayers)} has {len(sublayers)}")
        unknown = [k for k in group_kinds if k not in KIND_TITLES]
        if unknown:
            raise ValueError(f"unknown sub-layer kind(s) {unknown}; expected one of {sorted(KIND_TITLES)}")
        prefix = f"{name}: " if len(groups) > 1 else ""
        panels += [(f"{prefix}{KIND_TITLES[k]} ({sub})", units[:, :, j]) for j, (k, sub) in enumerate(zip(group_kinds, sublayers))]

    T, L = schedule.steps, len(panels)
    B = max(p[1].shape[1] for p in panels)
    if view == "paper":
        xlabel, ylabel, cbar = "layer (block index)", "sampling step", "sparsity (fraction of tokens reusing the cache)"
        figsize = (1.0 + max(2.6, 0.16 * B) * L, 1.2 + max(2.4, 0.17 * (T - 1)))
    else:
        xlabel, ylabel, cbar = "sampling step", "block index (0 = bottom)", "fraction of tokens recomputed"
        figsize = (1.0 + 3.2 * L, 3.4)
    if title is None:
        model = schedule.meta.get("model", "DiffSparse schedule")
        ratio = schedule.meta.get("ratio")
        title = (f"{model}: T={T}, mean sparsity {schedule.mean_sparsity():.2f}"
                 + (f", R={ratio}" if ratio is not None else ""))

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, L, squeeze=False, sharey=True)[0]
    im = None
    for ax, (name, units) in zip(axes, panels):
        sparsity = units.to(torch.float64) * schedule.interval          # (T−1, blocks): steps 1 … T−1
        blocks = sparsity.shape[1]
        if view == "paper":
            data, extent = sparsity.numpy(), (-0.5, blocks - 0.5, T - 0.5, 0.5)   # step 1 at the top
        else:
            keep = torch.ones(T, blocks, dtype=torch.float64)
            keep[1:] = 1.0 - sparsity
            data, extent = keep.numpy().T, (-0.5, T - 0.5, -0.5, blocks - 0.5)  # block 0 at the bottom
        im = ax.imshow(data, origin="upper" if view == "paper" else "lower", aspect="auto",
                       cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", extent=extent)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    if view == "paper" and T - 1 <= 25:
        axes[0].set_yticks(range(1, T))                                # every step: the first shown is 1, not 0
    fig.colorbar(im, ax=list(axes), label=cbar)
    fig.suptitle(title)
    return fig


def schedule_heatmap(schedule, kinds, out_path, title=None, dpi: int = 150, view: str = "paper") -> Path:
    """Draw `schedule` (a methods.diffsparse.schedule.Schedule) to the PNG `out_path`; returns it.

    `kinds` is aligned with `schedule.sublayers`: "self_attn" | "cross_attn" | "mlp" each; `view` is
    "paper" (default) or "steps" (see :func:`heatmap_figure`).
    """
    fig = heatmap_figure(schedule, kinds, title=title, view=view)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_path
