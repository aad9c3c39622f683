"""dsbench.figures.schedule_heatmap: a valid PNG, drawn from the schedule's units, written atomically."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsbench.figures import schedule_heatmap
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
