"""What both metric workers share: their command line, the result file, the package versions.

Stdlib only, and imported as a sibling (`from worker_io import ...`): the workers run as scripts inside
their own environments, where this package is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--backend", choices=("real", "fake"), required=True)
    p.add_argument("--request", required=True)
    p.add_argument("--result", required=True)
    return p.parse_args(argv)


def versions(packages) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    found["python"] = sys.version.split()[0]
    return found


def write_result(path: str, obj: dict) -> None:
    """Atomic: the caller never reads half a result."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)
