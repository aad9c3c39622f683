"""Atomic writes: a temporary file in the target's folder, fsync, then os.replace.

A reader never sees a half-written file, and a killed job leaves at most a stray `.tmp` file behind.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


class WriteError(OSError):
    """A result that could not be written, in one line naming the file (and the free space, if full)."""


def write_error(path: Path, e: OSError) -> WriteError:
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            why += f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on {path.parent}); free space and rerun"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why += f"; make {path.parent} writable, or run in another directory (snakemake --directory)"
    return WriteError(e.errno, f"cannot write {path}: {why}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path` in one step. An OSError (read-only
    or full disk) becomes a WriteError naming `path`; nothing at `path` is touched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
