"""Sharded, deterministic, resumable generation of one cell's samples.

An existing shard is reused only if it is intact and was made under the settings asked for now (its
recorded sample identity); anything else is an error that names the difference, never an overwrite.
Each shard is generated under a lock, so two generators on one cell never make the same shard twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsbench.cell import Cell
from dsbench.samples import (CorruptShardError, check_identity, read_shard, sample_seed, shard_path, shard_ranges,
                             write_shard)

log = logging.getLogger(__name__)


def shard_meta(cell: Cell, identity: dict) -> dict:
    from dsbench.provenance import provenance

    return {"model": cell.model, "method": cell.method, "method_cfg": cell.method_cfg,
            "num_steps": cell.num_steps, "base_seed": identity["base_seed"], "identity": identity,
            **provenance(cell)}


def missing_shards(cell: Cell, out_dir: Path, shards: list[int], identity: dict | None = None) -> list[int]:
    """Shards still to generate. An existing shard is verified (digest, indices, identity): a corrupt or
    stale one is an error with the path and what to do, not overwritten."""
    ranges = shard_ranges(cell.num_samples, cell.config["shard_size"])
    identity = identity or cell.sample_identity()
    todo = []
    for k in shards:
        path = shard_path(out_dir, k)
        if path.exists():
            check_identity(path, identity)
            read_shard(path, ranges[k])
        else:
            todo.append(k)
    return todo


@contextlib.contextmanager
def shard_lock(path: Path):
    """An exclusive advisory lock beside the shard (flock: released by the kernel if the process dies).
    A second generator waits here, then finds the shard written and skips it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another generator writing %s", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generate(cell: Cell, out_dir: str | Path | None = None, shards: list[int] | None = None,
             base_seed: int | None = None, progress: bool = True) -> list[Path]:
    """Generate the given shards (default: all) of a cell, skipping those already written."""
    out_dir = Path(out_dir) if out_dir is not None else cell.samples_dir()
    ranges = shard_ranges(cell.num_samples, cell.config["shard_size"])
    shards = list(range(len(ranges))) if shards is None else shards
    bad = [k for k in shards if not 0 <= k < len(ranges)]
    if bad:
        raise ValueError(f"shard(s) {bad} out of range: {cell.model} has {len(ranges)} shards")
    cell.check_ready()  # a DiffSparse schedule must exist before its digest enters the identity
    identity = cell.sample_identity(base_seed)
    todo = missing_shards(cell, out_dir, shards, identity)
    if not todo:
        return [shard_path(out_dir, k) for k in shards]
    conditions = cell.conditions()  # checks the dataset before the model is built
    pipe = cell.build_pipeline()
    meta = shard_meta(cell, identity)
    batch = cell.batch_size
    total = sum(len(ranges[k]) for k in todo)
    with cell.accelerated(pipe) as engine, tqdm(total=total, desc=f"generate {cell.model}/{cell.method}",
                                                unit="sample", disable=not progress) as bar:
        for k in todo:
            path = shard_path(out_dir, k)
            with shard_lock(path):
                if missing_shards(cell, out_dir, [k], identity) == []:
                    bar.update(len(ranges[k]))
                    continue  # another generator wrote it while this one waited
                idx = list(ranges[k])
                seeds = [sample_seed(identity["base_seed"], i) for i in idx]
                images = []
                for j in range(0, len(idx), batch):
                    images.append(cell.sample(pipe, engine, [conditions[i] for i in idx[j:j + batch]],
                                              seeds[j:j + batch]))
                    bar.update(len(images[-1]))
                write_shard(path, np.concatenate([im.numpy() for im in images]), idx, seeds, meta)
    return [shard_path(out_dir, k) for k in shards]


__all__ = ["generate", "missing_shards", "CorruptShardError"]
