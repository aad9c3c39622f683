"""VBench (paper Table 3: Wan2.1-T2V-1.3B, 16 dimensions): prompt suite, model-file check, aggregation.

The per-dimension scores come from metrics/workers/vbench_worker.py inside envs/.venv-vbench. The final
scores are computed here: VBench's `scripts/cal_final_score.py` and `scripts/constant.py` are not in the
wheel, so their constants and formulas are written out below (Vchitect/VBench, scripts/constant.py at
commit 7975661; cal_final_score.py at 5ebbf0b). Scores are fractions; the leaderboard shows them × 100.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from dsbench.io import read_json
from metrics.external import run_worker

# --------------------------------------------------------------------------- scripts/constant.py
QUALITY_LIST = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC_LIST = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
                 "appearance_style", "temporal_style", "overall_consistency")
DIMENSIONS = QUALITY_LIST + SEMANTIC_LIST
NORMALIZE = {  # dimension -> (Min, Max) of the official normalisation
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0), "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0), "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222), "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364), "overall_consistency": (0.0, 0.364),
}
DIM_WEIGHT = {d: 0.5 if d == "dynamic_degree" else 1.0 for d in DIMENSIONS}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0

# --------------------------------------------------------------------------- prompt suite
FULL_INFO_ENTRIES = 946  # 944 distinct prompts: two appear under two entries (appearance_style and others)
VIDEOS_PER_PROMPT = 5  # "{prompt}-{i}.mp4", i in 0..4 (prompts/README.md), one seed per video
FLICKER_CANDIDATES = 25  # temporal_flickering: 25 sampled, VBench's static filter keeps 5 static ones
FULL_INFO_HINT = ("it ships in the vbench wheel: copy envs/.venv-vbench/lib/python3.*/site-packages/vbench/"
                  "VBench_full_info.json, or get it from https://github.com/Vchitect/VBench (vbench/)")

# --------------------------------------------------------------------------- model files (vbench/utils.py)
GRIT_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship")  # need detectron2
_B32 = ("clip_model/ViT-B-32.pt", "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
_L14 = ("clip_model/ViT-L-14.pt", "https://openaipublic.azureedge.net/clip/models/"
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt")
_VBENCH_MODELS = "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/"
_VICLIP = [("ViCLIP/ViClip-InternVid-10M-FLT.pth", _VBENCH_MODELS + "ViClip-InternVid-10M-FLT.pth"),
           # the same file ships in the openai-clip wheel: envs/.venv-vbench/lib/python3.*/site-packages/clip/
           ("ViCLIP/bpe_simple_vocab_16e6.txt.gz", "copy clip/bpe_simple_vocab_16e6.txt.gz from the vbench env")]
_GRIT = [("grit_model/grit_b_densecap_objectdet.pth",
          "https://datarelease.blob.core.windows.net/grit/models/grit_b_densecap_objectdet.pth")]
CACHE_FILES: dict[str, list[tuple[str, str]]] = {  # dimension -> [(path under VBENCH_CACHE_DIR, source)]
    "subject_consistency": [
        ("dino_model/dino_vitbase16_pretrain.pth",
         "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
        ("dino_model/facebookresearch_dino_main/hubconf.py",
         "git clone https://github.com/facebookresearch/dino <cache>/dino_model/facebookresearch_dino_main")],
    "background_consistency": [_B32],
    "temporal_flickering": [],
    "motion_smoothness": [("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth")],
    "dynamic_degree": [("raft_model/models/raft-things.pth",
                        "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip, unzipped into raft_model/")],
    "aesthetic_quality": [_L14, ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
                                 "https://github.com/LAION-AI/aesthetic-predictor/raw/main/"
                                 "sa_0_4_vit_l_14_linear.pth")],
    "imaging_quality": [("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "https://github.com/chaofengc/IQA-PyTorch/"
                         "releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth")],
    **{d: _GRIT for d in GRIT_DIMENSIONS},
    "human_action": [("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
                      _VBENCH_MODELS + "l16_ptk710_ftk710_ftk400_f16_res224.pth")],
    "scene": [("caption_model/tag2text_swin_14m.pth",
               "https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/tag2text_swin_14m.pth")],
    "appearance_style": [_B32],
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
}
HF_MODELS = {d: ["bert-base-uncased"] for d in ("scene", *GRIT_DIMENSIONS)}  # tag2text and GRiT tokenizers


def check_dimensions(dimensions: Sequence[str] | None) -> list[str]:
    dims = list(DIMENSIONS if dimensions is None else dimensions)
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown or len(set(dims)) != len(dims):
        raise ValueError(f"bad VBench dimensions {dims}: unknown {unknown} or repeated; valid: {', '.join(DIMENSIONS)}")
    return dims


def cache_dir(path: str | Path | None = None) -> Path:
    """VBench's model cache: the argument, else $VBENCH_CACHE_DIR, else ~/.cache/vbench (as vbench/utils.py)."""
    return Path(path or os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def required_files(dimensions: Sequence[str] | None = None, cache: str | Path | None = None,
                   hf_home: str | Path | None = None) -> list[tuple[Path, str]]:
    """(path, source) of every model file the dimensions read: vbench would wget a missing one."""
    from metrics.imagereward import hf_hub_dir

    root, seen, out = cache_dir(cache), set(), []
    for d in check_dimensions(dimensions):
        entries = [(root / rel, src) for rel, src in CACHE_FILES[d]]
        entries += [(hf_hub_dir(hf_home) / f"models--{m}", f"hf download {m} vocab.txt tokenizer_config.json "
                     "config.json") for m in HF_MODELS.get(d, [])]
        for path, src in entries:
            if path not in seen:
                seen.add(path)
                out.append((path, src))
    return out


def check_files(dimensions: Sequence[str] | None = None, cache: str | Path | None = None,
                hf_home: str | Path | None = None) -> None:
    missing = [(p, s) for p, s in required_files(dimensions, cache, hf_home) if not p.exists()]
    if missing:
        lines = "\n".join(f"  {p}  <-  {s}" for p, s in missing)
        raise FileNotFoundError(f"VBench model files missing (set VBENCH_CACHE_DIR / the cache_dir option to "
                                f"relocate the cache):\n{lines}")


# --------------------------------------------------------------------------- prompt suite
def load_full_info(path: str | Path, expected: int | None = FULL_INFO_ENTRIES) -> list[dict]:
    """VBench_full_info.json: [{"prompt_en", "dimension": [...], "auxiliary_info"?}], checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VBench prompt suite not found: {path}; {FULL_INFO_HINT}")
    info = read_json(path)
    if not isinstance(info, list) or not all(isinstance(e, dict) and isinstance(e.get("prompt_en"), str)
                                             and isinstance(e.get("dimension"), list) for e in info):
        raise ValueError(f"{path} is not a VBench full-info list of {{prompt_en, dimension}} entries")
    if expected is not None and len(info) != expected:
        raise ValueError(f"{path} has {len(info)} entries; VBench's standard suite has {expected}")
    bad = sorted({d for e in info for d in e["dimension"] if d not in DIMENSIONS})
    if bad:
        raise ValueError(f"{path} names unknown dimensions {bad}")
    return info


def dimension_counts(info: Sequence[dict]) -> dict[str, int]:
    return {d: sum(d in e["dimension"] for e in info) for d in DIMENSIONS}


def expected_videos(info: Sequence[dict], dimensions: Sequence[str] | None = None, ext: str = ".mp4",
                    flicker_candidates: bool = False) -> list[tuple[str, int, str]]:
    """(prompt, index, file name) of every video the dimensions need, each distinct prompt once, in suite order.

    flicker_candidates: temporal_flickering prompts get indices 0..24, the candidates VBench's static filter
    (`vbench static_filter`) picks 5 static videos from, into a folder of its own (``videos_by_dimension``).
    """
    dims = set(check_dimensions(dimensions))
    flicker = {e["prompt_en"] for e in info if "temporal_flickering" in e["dimension"]}
    out, seen = [], set()
    for e in info:
        prompt = e["prompt_en"]
        if prompt in seen or not dims & set(e["dimension"]):
            continue
        seen.add(prompt)
        n = FLICKER_CANDIDATES if flicker_candidates and prompt in flicker else VIDEOS_PER_PROMPT
        out += [(prompt, i, f"{prompt}-{i}{ext}") for i in range(n)]
    return out


def missing_videos(videos_path: str | Path, info: Sequence[dict], dimensions: Sequence[str] | None = None,
                   ext: str = ".mp4") -> list[str]:
    """The expected files absent from ``videos_path`` (VBench itself only warns about them)."""
    folder = Path(videos_path)
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    return [name for _, _, name in expected_videos(info, dimensions, ext) if name not in present]


# --------------------------------------------------------------------------- aggregation
def _raw(dim: str, value: Any) -> float:
    score = value[0] if isinstance(value, (list, tuple)) else value  # {dim: [aggregate, per_video]} or a number
    score = float(score)
    if not math.isfinite(score):
        raise ValueError(f"VBench score of {dim} is not finite: {score}")
    return score


def normalized(dim: str, raw: float) -> float:
    """cal_final_score.get_nomalized_score: (raw − Min) / (Max − Min) × DIM_WEIGHT."""
    lo, hi = NORMALIZE[dim]
    return (raw - lo) / (hi - lo) * DIM_WEIGHT[dim]


def _group(norm: Mapping[str, float], dims: Sequence[str]) -> float | None:
    dims = [d for d in dims if d in norm]
    return sum(norm[d] for d in dims) / sum(DIM_WEIGHT[d] for d in dims) if dims else None


def _total(quality: float | None, semantic: float | None) -> float | None:
    if quality is None or semantic is None:
        return None
    return (quality * QUALITY_WEIGHT + semantic * SEMANTIC_WEIGHT) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(results: Mapping[str, Any]) -> dict:
    """Every aggregation of per-dimension scores ({dim: [score, per_video]} as VBench writes, or {dim: score}).

    - quality / semantic / total: the official scores. As cal_final_score.py does, a missing dimension is
      scored 0 *before* normalisation, which is negative where Min > 0 (flickering: −1.70).
    - available: the same formulas over the dimensions present only (weights renormalised).
    - raw_mean (and per group): the unweighted mean of the raw scores present (one candidate for the
      paper's "43.82", whose aggregation the paper does not state).
    """
    check_dimensions(list(results))
    raw = {d: _raw(d, v) for d, v in results.items()}
    missing = [d for d in DIMENSIONS if d not in raw]
    norm = {d: normalized(d, raw[d]) for d in raw}
    filled = {d: normalized(d, raw.get(d, 0.0)) for d in DIMENSIONS}
    quality, semantic = _group(filled, QUALITY_LIST), _group(filled, SEMANTIC_LIST)
    q_av, s_av = _group(norm, QUALITY_LIST), _group(norm, SEMANTIC_LIST)
    return {
        "raw": {d: raw[d] for d in DIMENSIONS if d in raw},
        "normalized": {d: norm[d] for d in DIMENSIONS if d in norm},
        "missing": missing,
        "quality": quality, "semantic": semantic, "total": _total(quality, semantic),
        "available": {"quality": q_av, "semantic": s_av, "total": _total(q_av, s_av)},
        "raw_mean": _mean(list(raw.values())),
        "raw_mean_quality": _mean([raw[d] for d in QUALITY_LIST if d in raw]),
        "raw_mean_semantic": _mean([raw[d] for d in SEMANTIC_LIST if d in raw]),
    }


# --------------------------------------------------------------------------- one evaluation
def evaluate_vbench(videos_path: str | Path, full_info: str | Path, workdir: str | Path, *,
                    dimensions: Sequence[str] | None = None, backend: str = "real", device: str = "cuda",
                    name: str = "vbench", cache: str | Path | None = None, hf_home: str | Path | None = None,
                    videos_by_dimension: Mapping[str, str | Path] | None = None, ext: str = ".mp4",
                    allow_missing: bool = False, expected_entries: int | None = FULL_INFO_ENTRIES,
                    fake_scores: Mapping[str, float] | None = None, vbench_kwargs: Mapping[str, Any] | None = None,
                    python: str | Path | None = None, envs_root: str | Path | None = None,
                    timeout: float | None = None) -> dict:
    """Score a folder of "{prompt}-{i}.mp4" videos on the dimensions and aggregate.

    Everything a run needs (suite, videos, model files) is checked before the worker starts. ``workdir``
    keeps VBench's per-dimension result files, so a rerun resumes. Returns ``aggregate(...)`` plus
    ``unavailable`` (dimensions the environment cannot run, e.g. GRiT without detectron2, with the reason),
    ``per_video`` and the worker's package versions.
    """
    dims = check_dimensions(dimensions)
    info = load_full_info(full_info, expected_entries)
    if backend == "real":
        check_files(dims, cache, hf_home)
    folders = {d: Path((videos_by_dimension or {}).get(d, videos_path)).resolve() for d in dims}
    for folder in sorted(set(folders.values())):
        if not folder.is_dir():
            raise FileNotFoundError(f"VBench videos folder not found: {folder}")
        # VBench takes the extension from the first file it lists: anything else in the folder breaks it.
        strays = sorted(f for f in os.listdir(folder) if not f.endswith(ext))
        if strays:
            raise ValueError(f"{folder} holds files other than *{ext} (e.g. {strays[:3]}); VBench needs a "
                             f"folder of videos only")
        missing = missing_videos(folder, info, [d for d in dims if folders[d] == folder], ext)
        if missing and not allow_missing:
            raise FileNotFoundError(f"{len(missing)} VBench videos missing from {folder}, e.g. {missing[:3]} "
                                    f"(allow_missing=True scores the rest, as VBench does with a warning)")
    request = {"full_info": str(Path(full_info).resolve()), "videos_path": str(Path(videos_path).resolve()),
               "videos_by_dimension": {d: str(folders[d]) for d in dims}, "output_dir": str(Path(workdir).resolve()),
               "name": name, "dimensions": dims, "device": device, "ext": ext,
               "kwargs": dict(vbench_kwargs or {}), "fake_scores": dict(fake_scores or {})}
    res = run_worker("vbench", request, workdir, backend=backend, python=python, envs_root=envs_root,
                     hf_home=hf_home, vbench_cache_dir=cache, timeout=timeout)
    out = aggregate(res["results"])
    out.update(requested=dims, unavailable=res.get("unavailable", {}), backend=res["backend"],
               per_video={d: v[1] for d, v in res["results"].items()}, versions=res.get("versions", {}))
    return out
