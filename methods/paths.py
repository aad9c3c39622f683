"""Paths a variant names: committed artefacts (proxy weights, proxy schedules) found from any directory."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


COMMITTED = "models"   # the repository folder of committed artefacts


def committed_path(path: str | Path) -> Path:
    """`path` as given (relative to the working directory), or, where that does not exist and it names a
    committed artefact (under models/, e.g. models/proxies/schedules/...), the file inside this repository,
    so that a workflow run in another directory finds it. Other paths (results/...) are never redirected."""
    path = Path(path)
    inside = REPO / path
    committed = not path.is_absolute() and path.parts[:1] == (COMMITTED,)
    return inside if committed and not path.exists() and inside.exists() else path
