"""Sample identity and shard storage.

Sample i of a cell has a fixed condition and a fixed seed derived from (base seed, i), whatever the batch
size, shard size or number of GPUs. A shard is one .npz (uint8 images, indices, seeds, and a digest of
the images) written atomically; reading verifies it. Generation resumes at the first missing shard.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsbench.io import atomic_path


def sample_seed(base_seed: int, index: int) -> int:
    """Seed of sample `index`: independent streams per (base seed, index), not base+index (which collide)."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1, dtype=np.uint32)[0])


def shard_ranges(num_samples: int, shard_size: int) -> list[range]:
    return [range(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def shard_path(folder: str | Path, shard: int) -> Path:
    return Path(folder) / f"shard_{shard:05d}.npz"


class CorruptShardError(ValueError):
    pass


class MissingShardError(FileNotFoundError):
    pass


class StaleShardError(ValueError):
    """A shard made under other settings than the cell asked for (its images would answer another question)."""


@dataclass
class Shard:
    images: np.ndarray   # uint8 (N, H, W, 3); videos (N, frames, H, W, 3)
    indices: np.ndarray  # int64 (N,)
    seeds: np.ndarray    # int64 (N,)
    meta: dict


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def write_shard(path: str | Path, images: np.ndarray, indices, seeds, meta: dict) -> None:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (4, 5) or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3) or videos (N, frames, H, W, 3), got {images.dtype} "
                         f"{images.shape}")
    if not (len(images) == len(indices) == len(seeds)):
        raise ValueError("images, indices and seeds must have the same length")
    meta = {**meta, "sha256": _digest(images)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
            np.savez(fh, images=images, indices=np.asarray(indices, np.int64),
                     seeds=np.asarray(seeds, np.int64), meta=np.array(json.dumps(meta, sort_keys=True)))


def _missing(path: Path) -> MissingShardError:
    return MissingShardError(f"sample shard {path} is missing: generate it first (`dsbench generate --model "
                             f"{path.parent.parent.name} --method {path.parent.name}`, or the workflow's generate_shard rule)")


def read_shard(path: str | Path, expect_indices: range | None = None) -> Shard:
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = Shard(z["images"], z["indices"], z["seeds"], json.loads(str(z["meta"])))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise CorruptShardError(f"corrupt shard {path}: {e}; delete it and rerun generation") from e
    if shard.meta.get("sha256") != _digest(shard.images):
        raise CorruptShardError(f"corrupt shard {path}: image digest mismatch; delete it and rerun generation")
    if expect_indices is not None and list(shard.indices) != list(expect_indices):
        raise CorruptShardError(f"shard {path} holds samples {shard.indices[:3]}... but "
                                f"{expect_indices} were expected (shard_size changed?)")
    return shard


def read_meta(path: str | Path) -> dict:
    """A shard's meta alone (an .npz member is read on access: the images stay on disk)."""
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise CorruptShardError(f"corrupt shard {path}: {e}; delete it and rerun generation") from e


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): obj}


def identity_difference(found: dict, expected: dict) -> str | None:
    """The settings (dotted keys) on which two sample identities differ, as "key is A there, B now", or None."""
    a, b = _flat(found), _flat(expected)
    diffs = [f"{key} is {a.get(key, '<unset>')!r} there, {b.get(key, '<unset>')!r} now"
             for key in sorted(set(a) | set(b)) if a.get(key, "<unset>") != b.get(key, "<unset>")]
    return ", ".join(diffs) or None


def check_identity(path: str | Path, expected: dict) -> None:
    """Refuse a shard whose recorded identity (the settings its images depend on) is not `expected`."""
    path = Path(path)
    found = read_meta(path).get("identity")
    how = (f"delete {path.parent} to regenerate it under the current config (or generate into another "
           f"--root to keep both)")
    if found is None:
        raise StaleShardError(f"{path} records no sample identity (written by an older dsbench): {how}")
    diff = identity_difference(found, expected)
    if diff is not None:
        raise StaleShardError(f"{path} was generated under other settings: {diff}; {how}")


def check_cell(folder: str | Path, num_samples: int, shard_size: int, expected: dict) -> None:
    """Every shard of a cell present and made under `expected` (meta only: cheap, before any metric work)."""
    for k in range(len(shard_ranges(num_samples, shard_size))):
        check_identity(shard_path(folder, k), expected)


def with_progress(batches, total: int, desc: str, enabled: bool = True):
    """The same batches, with a tqdm bar counting their samples (rate and ETA) on stderr."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="sample", disable=not enabled) as bar:
        for b in batches:
            yield b
            bar.update(len(b))


def iter_images(folder: str | Path, num_samples: int, shard_size: int, limit: int | None = None):
    """uint8 image batches of a cell, shard by shard, in sample order (never all in memory at once)."""
    left = num_samples if limit is None else min(limit, num_samples)
    for k, rng in enumerate(shard_ranges(num_samples, shard_size)):
        if left <= 0:
            return
        shard = read_shard(shard_path(folder, k), rng)
        yield shard.images[:left]
        left -= len(shard.images)
