"""A PNG grid of samples: one row per method (first N samples, same seeds and conditions), to look at."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dsbench.io import atomic_path
from dsbench.samples import iter_images


def sample_grid(rows: dict[str, np.ndarray], out: str | Path, scale: int = 4, pad: int = 2) -> Path:
    """rows: label -> uint8 (N, H, W, 3), all the same shape. Labels are drawn left of each row."""
    from PIL import Image, ImageDraw

    shapes = {r.shape for r in rows.values()}
    if len(shapes) != 1:
        raise ValueError(f"rows differ in shape: {sorted(shapes)}")
    n, h, w, _ = shapes.pop()
    h, w, label_w = h * scale, w * scale, 110
    canvas = Image.new("RGB", (label_w + n * (w + pad), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows.items()):
        y = r * (h + pad)
        draw.text((4, y + h // 2 - 6), label, fill="black")
        for c, im in enumerate(images):
            tile = Image.fromarray(im).resize((w, h), Image.NEAREST)  # nearest: show the real pixels
            canvas.paste(tile, (label_w + c * (w + pad), y))
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out)


def method_rows(root: str | Path, model: str, methods: list[str], num_samples: int, shard_size: int,
                n: int) -> dict[str, np.ndarray]:
    """The first n samples of each method's cell, read from its shards (videos: their middle frame)."""
    rows = {}
    for m in methods:
        folder = Path(root) / "samples" / model / m
        images = np.concatenate(list(iter_images(folder, num_samples, shard_size, limit=n)))[:n]
        rows[m] = images[:, images.shape[1] // 2] if images.ndim == 5 else images
    return rows
