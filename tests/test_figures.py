"""dsbench.figures.schedule_heatmap: a valid PNG, drawn from the schedule's units, written atomically; by
default as the paper's Figure 3 (x = layers, y = steps 1 … T−1, colour = sparsity), or steps × blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsbench.figures import heatmap_figure, schedule_heatmap
from methods.diffsparse.schedule import Schedule

SUBLAYERS = ("attn1", "attn2", "ff")
KINDS = ("self_attn", "cross_attn", "mlp")
T, BLOCKS, INTERVAL = 5, 4, 0.25          # candidates u ∈ {0 … 4}


def make(units: torch.Tensor, **meta) -> Schedule:
    return Schedule(units.to(torch.int64), INTERVAL, SUBLAYERS, meta=meta)


def random_schedule(seed: int = 0) -> Schedule:
    g = torch.Generator().manual_seed(seed)
    return make(torch.randint(0, 5, (T - 1, BLOCKS, len(SUBLAYERS)), generator=g), model="pixart", ratio=0.43)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 0 and im.height > 0
        assert im.mode in ("RGB", "RGBA")
        return np.asarray(im.convert("RGB"))


def test_renders_valid_png(tmp_path):
    out = schedule_heatmap(random_schedule(), KINDS, tmp_path / "fig3.png")
    assert out == tmp_path / "fig3.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = pixels(out)
    assert img.std() > 0                                  # not a blank canvas


def test_pixels_follow_units(tmp_path):
    shape = (T - 1, BLOCKS, len(SUBLAYERS))
    title = "fixed"                                       # same title, so only the heatmaps can differ
    a = schedule_heatmap(make(torch.zeros(shape)), KINDS, tmp_path / "dense.png", title=title)
    b = schedule_heatmap(make(torch.full(shape, 4)), KINDS, tmp_path / "sparse.png", title=title)
    pa, pb = pixels(a), pixels(b)
    assert pa.shape == pb.shape
    assert not np.array_equal(pa, pb)
    # the same schedule renders the same pixels (deterministic)
    c = schedule_heatmap(make(torch.zeros(shape)), KINDS, tmp_path / "dense2.png", title=title)
    assert np.array_equal(pa, pixels(c))


def test_default_title_and_two_sublayers(tmp_path):
    s = Schedule(torch.ones(T - 1, BLOCKS, 2, dtype=torch.int64), INTERVAL, ("attn", "mlp"))
    pixels(schedule_heatmap(s, ("self_attn", "mlp"), tmp_path / "dit.png"))  # no meta: still a title


def test_mismatched_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"kinds.*attn1"):
        schedule_heatmap(random_schedule(), ("self_attn", "mlp"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="unknown sub-layer kind"):
        schedule_heatmap(random_schedule(), ("self_attn", "cross_attn", "conv"), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file_atomically(tmp_path):
    out = tmp_path / "sub" / "fig3.png"
    out.parent.mkdir()
    out.write_bytes(b"stale")
    schedule_heatmap(random_schedule(1), KINDS, out)
    pixels(out)
    assert [p.name for p in out.parent.iterdir()] == ["fig3.png"]  # no .tmp left behind


def test_paper_view_is_layers_by_steps_coloured_by_sparsity_without_step_0():
    """The paper's Figure 3: "the x-axis denotes different network layers, the y-axis denotes sampling time
    steps, and the color gradient from blue to yellow indicates increasing sparsity", first step omitted."""
    sched = random_schedule()
    fig = heatmap_figure(sched, KINDS)                                  # the default view
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == len(KINDS)
    for j, ax in enumerate(axes):
        data = np.asarray(ax.images[0].get_array())
        assert data.shape == (T - 1, BLOCKS)                            # rows = y = steps 1 … T−1, columns = x = blocks
        np.testing.assert_allclose(data, sched.sparsity[:, :, j].numpy())   # colour is sparsity, not 1 − sparsity
        left, right, bottom, top = ax.images[0].get_extent()
        assert (left, right) == (-0.5, BLOCKS - 0.5)                    # x: block 0 … B−1
        assert sorted((bottom, top)) == [0.5, T - 0.5]                  # y: steps 1 … T−1, no step 0
        assert top < bottom                                             # step 1 at the top
        assert ax.images[0].get_clim() == (0.0, 1.0) and ax.images[0].get_cmap().name == "viridis"
        assert "layer" in ax.get_xlabel()
    assert "step" in axes[0].get_ylabel()
    assert min(axes[0].get_yticks()) == 1
    colorbar = [ax for ax in fig.axes if not ax.images]
    assert len(colorbar) == 1 and "sparsity" in colorbar[0].get_ylabel()


def test_paper_view_pixels_put_step_1_on_top_and_sparsity_in_yellow():
    units = torch.zeros(T - 1, BLOCKS, len(SUBLAYERS), dtype=torch.int64)
    units[0] = 4                                                        # step 1: sparsity 1 everywhere
    units[:, BLOCKS - 1] = 4                                            # the last block: sparsity 1 at every step
    fig = heatmap_figure(make(units), KINDS, title="fixed")
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ax = fig.axes[0]
    yellow, dark = (np.array(c[:3]) * 255 for c in (ax.images[0].get_cmap()(1.0), ax.images[0].get_cmap()(0.0)))

    def pixel(block, step):
        x, y = ax.transData.transform((block, step))
        return img[img.shape[0] - int(round(y)), int(round(x))]

    assert np.abs(pixel(0, 1) - yellow).max() < 8                       # step 1 (top row) is all sparse
    assert np.abs(pixel(BLOCKS - 1, T - 1) - yellow).max() < 8          # the last layer (right column)
    assert np.abs(pixel(0, T - 1) - dark).max() < 8                     # block 0 at the last step: dense
    _, y_top = ax.transData.transform((0, 1))
    _, y_bottom = ax.transData.transform((0, T - 1))
    assert y_top > y_bottom                                             # display y grows upwards: step 1 on top


def test_steps_view_keeps_the_steps_by_blocks_layout_with_step_0_full():
    sched = random_schedule()
    fig = heatmap_figure(sched, KINDS, view="steps")
    axes = [ax for ax in fig.axes if ax.images]
    for j, ax in enumerate(axes):
        data = np.asarray(ax.images[0].get_array())
        assert data.shape == (BLOCKS, T)                                # rows = y = blocks, columns = x = steps 0 … T−1
        assert (data[:, 0] == 1).all()                                  # step 0 computes in full
        np.testing.assert_allclose(data[:, 1:], 1 - sched.sparsity[:, :, j].numpy().T)
        assert ax.get_xlabel() == "sampling step"
    colorbar = [ax for ax in fig.axes if not ax.images]
    assert "recomputed" in colorbar[0].get_ylabel()


def test_unknown_view(tmp_path):
    with pytest.raises(ValueError, match="view"):
        schedule_heatmap(random_schedule(), KINDS, tmp_path / "x.png", view="blocks")
    assert list(tmp_path.iterdir()) == []
