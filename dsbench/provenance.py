"""Provenance carried by every shard and results row: code, config, packages, device, weights."""
from __future__ import annotations

import functools
import importlib.metadata as md
import platform
import subprocess

from dsbench.config import REPO, digest


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def versions() -> str:
    names = ["torch", "diffusers", "transformers", "clean-fid", "open_clip_torch", "lpips"]
    found = []
    for n in names:
        try:
            found.append(f"{n}={md.version(n)}")
        except md.PackageNotFoundError:
            pass
    return " ".join(found)


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()})"


def weights_id(cell) -> str:
    """Which weights a cell samples with: a hub id or folder, a proxy's file digests, or the tiny seed."""
    m = cell.model_cfg
    if m["source"] == "real":
        return m.get("weights") or cell.adapter.preset.hub_id
    if m["source"] == "proxy":
        from models.proxy import proxy_dir, verified

        folder = proxy_dir(cell.adapter.preset.proxy, m.get("weights"))
        return f"proxy {folder.name} " + ",".join(f"{k}:{v[:12]}" for k, v in verified(folder)["sha256"].items())
    return f"{m['source']} seeded random (seed {cell.config['seed']})"


def provenance(cell) -> dict:
    m = cell.model_cfg
    cell_id = {"model": {k: v for k, v in m.items() if k != "methods"}, "method": cell.method_cfg}
    return {"git_commit": git_commit(), "config_hash": digest(cell_id),
            "versions": versions(), "device": device_name(cell.config["device"]), "model_source": weights_id(cell)}
