"""Locating real weights without downloading: a hub id in the local Hugging Face cache, or a local directory.

Loading never downloads implicitly: on a cluster node without internet a silent download attempt hangs
or fails late; we want a clear error naming the repo and the command that fetches it, before any GPU work.
"""
from __future__ import annotations

from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    pass


def fetch_hint(repo: str) -> str:
    return f"hf download {repo}  (or set `weights:` for this model in config.yaml to a local directory)"


def resolve(repo_or_path: str) -> Path:
    """Local directory holding a diffusers repo snapshot, or MissingWeightsError."""
    p = Path(repo_or_path).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_or_path, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise MissingWeightsError(
            f"weights {repo_or_path!r} are neither a local directory nor in the Hugging Face cache "
            f"(HF_HOME={_hf_home()}); fetch them with: {fetch_hint(repo_or_path)}"
        ) from e


def is_present(repo_or_path: str) -> bool:
    try:
        resolve(repo_or_path)
        return True
    except MissingWeightsError:
        return False


def _hf_home() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HOME)
