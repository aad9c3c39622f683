"""VBench worker: runs inside envs/.venv-vbench, started by metrics/external.py.

Request: {"full_info": VBench_full_info.json, "videos_path": folder, "videos_by_dimension": {dim: folder}
(e.g. temporal_flickering's static-filtered videos), "output_dir", "name", "dimensions", "device", "ext",
"kwargs": extra VBench.evaluate arguments, "fake_scores": {dim: float} (fake backend)}.
Result: {"backend", "results": {dim: [aggregate, per_video]}, "unavailable": {dim: why}, "versions"}.

Each dimension is evaluated on its own and its VBench result file is kept in output_dir, so a rerun
after a crash resumes at the first dimension without one. Only the stdlib is imported at the top, so
the fake backend runs under any Python; our package is not imported (it is not installed here).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import util
from pathlib import Path

from worker_io import parse_args, versions, write_result  # a sibling: this runs as a script

GRIT_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship")
NO_DETECTRON2 = ("unavailable: detectron2 is not installed in the vbench environment (GRiT needs it; it is "
                 "not on PyPI). Install it from source with a CUDA toolkit matching torch: <env>/bin/pip "
                 "install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'")
PACKAGES = ("vbench", "torch", "torchvision", "transformers", "timm", "numpy", "detectron2", "pyiqa", "decord")
VIDEOS_PER_PROMPT = 5  # VBench's standard mode looks for "{prompt}-{i}{ext}", i in 0..4


def unavailable(dimensions: list[str]) -> dict[str, str]:
    """Dimensions this environment cannot evaluate, with the reason (checked before any model loads)."""
    if util.find_spec("detectron2") is None:
        return {d: NO_DETECTRON2 for d in dimensions if d in GRIT_DIMENSIONS}
    return {}


def videos_dir(req: dict, dim: str) -> str:
    return (req.get("videos_by_dimension") or {}).get(dim, req["videos_path"])


def videos_for(req: dict, info: list[dict], dim: str) -> list[str]:
    """The files VBench's standard mode would pick for one dimension."""
    folder = Path(videos_dir(req, dim))
    present = set(os.listdir(folder))
    return [str(folder / f"{e['prompt_en']}-{i}{req['ext']}") for e in info if dim in e["dimension"]
            for i in range(VIDEOS_PER_PROMPT) if f"{e['prompt_en']}-{i}{req['ext']}" in present]


def fake_score(dim: str) -> float:
    """Default fake score of a dimension not given in the request: from sha256 of its name, in [0, 1)."""
    return int.from_bytes(hashlib.sha256(dim.encode()).digest()[:8], "big") / 2.0**64


def evaluate_fake(req: dict, dims: list[str]) -> dict[str, list]:
    info = json.loads(Path(req["full_info"]).read_text(encoding="utf-8"))
    results = {}
    for dim in dims:
        score = float((req.get("fake_scores") or {}).get(dim, fake_score(dim)))
        videos = videos_for(req, info, dim)
        if not videos:
            raise SystemExit(f"no videos for {dim} in {videos_dir(req, dim)}")
        results[dim] = [score, [{"video_path": v, "video_results": score} for v in videos]]
    return results


def _saved(path: Path, dim: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))[dim]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def evaluate_real(req: dict, dims: list[str]) -> dict[str, list]:
    import torch
    from vbench import VBench

    out = Path(req["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    bench = VBench(torch.device(req["device"]), req["full_info"], str(out))
    results = {}
    for dim in dims:
        name = f"{req['name']}-{dim}"
        path = out / f"{name}_eval_results.json"
        if _saved(path, dim) is None:
            print(f"[vbench worker] evaluating {dim}", file=sys.stderr, flush=True)
            # local=True: models come from VBENCH_CACHE_DIR (checked by the caller), never from the hub.
            bench.evaluate(videos_path=videos_dir(req, dim), name=name, dimension_list=[dim], local=True,
                           mode="vbench_standard", **(req.get("kwargs") or {}))
        results[dim] = _saved(path, dim)
        if results[dim] is None:
            raise SystemExit(f"VBench wrote no result for {dim} in {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse_args(__doc__, argv)
    req = json.loads(Path(a.request).read_text(encoding="utf-8"))
    skipped = unavailable(req["dimensions"])
    for dim, why in skipped.items():
        print(f"[vbench worker] {dim}: {why}", file=sys.stderr, flush=True)
    run = [d for d in req["dimensions"] if d not in skipped]
    results = (evaluate_real if a.backend == "real" else evaluate_fake)(req, run)
    write_result(a.result, {"backend": a.backend, "results": results, "unavailable": skipped,
                            "versions": versions(PACKAGES)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
