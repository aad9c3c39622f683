"""VBench's input: a cell's video shards written out as "{prompt}-{k}.mp4" files (VBench's naming).

H.264 through the ffmpeg binary imageio-ffmpeg ships, at the preset's frame rate: Wan2.1's 16 fps, as Wan's
own examples save their videos, or 8 fps for Table 3's paper-size preset (diffusers' export_to_video goes
through imageio's plugin, which cannot write to the atomic writer's temporary name).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dsbench.io import atomic_path
from dsbench.samples import read_shard, shard_path, shard_ranges

FPS = 16


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS) -> None:
    """uint8 (frames, H, W, 3) to an mp4 file, atomically."""
    import imageio_ffmpeg

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a video must be uint8 (frames, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", quality=5,
                                             macro_block_size=16, output_params=["-f", "mp4"])
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()


def export_videos(folder: str | Path, num_samples: int, shard_size: int, names: list[str],
                  out_dir: str | Path, fps: int = FPS) -> Path:
    """Sample i of the shards in `folder` as out_dir/names[i] at `fps`; files already there are kept (resumable)."""
    if len(names) != num_samples:
        raise ValueError(f"{len(names)} file names for {num_samples} samples")
    out_dir = Path(out_dir)
    for k, rng in enumerate(shard_ranges(num_samples, shard_size)):
        todo = [i for i in rng if not (out_dir / names[i]).exists()]
        if not todo:
            continue
        shard = read_shard(shard_path(folder, k), rng)
        if shard.images.ndim != 5:
            raise ValueError(f"{shard_path(folder, k)} holds images, not videos: {shard.images.shape}")
        for i in todo:
            write_mp4(out_dir / names[i], shard.images[i - rng.start], fps=fps)
    return out_dir
