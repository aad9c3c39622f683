"""Sharded, deterministic, resumable generation of one cell's samples."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsbench.cell import Cell
from dsbench.samples import CorruptShardError, read_shard, sample_seed, shard_path, shard_ranges, write_shard

log = logging.getLogger(__name__)


def shard_meta(cell: Cell) -> dict:
    from dsbench.provenance import provenance

    return {"model": cell.model, "method": cell.method, "method_cfg": cell.method_cfg,
            "num_steps": cell.num_steps, "base_seed": cell.config["seed"], **provenance(cell)}


def missing_shards(cell: Cell, out_dir: Path, shards: list[int]) -> list[int]:
    """Shards still to generate; an existing shard is verified, and a corrupt one is an error, not overwritten."""
    ranges = shard_ranges(cell.num_samples, cell.config["shard_size"])
    todo = []
    for k in shards:
        path = shard_path(out_dir, k)
        if path.exists():
            read_shard(path, ranges[k])  # raises CorruptShardError with the path and what to do
        else:
            todo.append(k)
    return todo


def generate(cell: Cell, out_dir: str | Path | None = None, shards: list[int] | None = None,
             base_seed: int | None = None, progress: bool = True) -> list[Path]:
    """Generate the given shards (default: all) of a cell, skipping those already written."""
    out_dir = Path(out_dir) if out_dir is not None else cell.samples_dir()
    ranges = shard_ranges(cell.num_samples, cell.config["shard_size"])
    shards = list(range(len(ranges))) if shards is None else shards
    bad = [k for k in shards if not 0 <= k < len(ranges)]
    if bad:
        raise ValueError(f"shard(s) {bad} out of range: {cell.model} has {len(ranges)} shards")
    seed0 = cell.config["seed"] if base_seed is None else base_seed
    todo = missing_shards(cell, out_dir, shards)
    if not todo:
        return [shard_path(out_dir, k) for k in shards]
    conditions = cell.conditions()  # checks the dataset before the model is built
    cell.check_ready()
    pipe = cell.build_pipeline()
    meta = shard_meta(cell) | {"base_seed": seed0}
    batch = cell.batch_size
    with cell.accelerated(pipe) as engine:
        for k in tqdm(todo, desc=f"{cell.model}/{cell.method}", disable=not progress):
            idx = list(ranges[k])
            seeds = [sample_seed(seed0, i) for i in idx]
            images = [cell.sample(pipe, engine, [conditions[i] for i in idx[j:j + batch]], seeds[j:j + batch])
                      for j in range(0, len(idx), batch)]
            write_shard(shard_path(out_dir, k), np.concatenate([im.numpy() for im in images]), idx, seeds, meta)
    return [shard_path(out_dir, k) for k in shards]


__all__ = ["generate", "missing_shards", "CorruptShardError"]
