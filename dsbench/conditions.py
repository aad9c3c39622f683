"""Conditions of sample i for each dataset: caption text or ImageNet class id.

Sample i's condition is fixed by its index alone, never by batch or shard, and images are keyed by
index, never by caption text (duplicate captions must not overwrite each other).
"""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

PARTIPROMPTS_URL = "https://github.com/google-research/parti/blob/main/PartiPrompts.tsv"
# dataset -> (file under `resources`, where to get it)
DATASET_FILES = {
    "coco30k": ("datasets/coco30k/COCO_caption_prompts_30k.txt",
                "one caption per line, 30,000 lines: the COCO caption list of the ToCa/PixArt FID-30k protocol "
                "(30,003 lines in ToCa's copy, with duplicates); build it with `dsbench prepare-coco` from the COCO "
                "captions JSON, or place ToCa's file at this path"),
    "partiprompts": ("datasets/partiprompts/PartiPrompts.tsv",
                     f"PartiPrompts.tsv, 1,632 prompts, from {PARTIPROMPTS_URL}"),
    "vbench": ("datasets/vbench/VBench_full_info.json",
               "VBench's prompt suite, 946 entries: it ships in the vbench wheel (envs/.venv-vbench/lib/python3.*/"
               "site-packages/vbench/VBench_full_info.json), or get it from https://github.com/Vchitect/VBench"),
    "webvid_captions": ("datasets/webvid/webvid_10k_captions.txt",
                        "10,000 captions, one per line, drawn from WebVid-10M's metadata (results_10M_train.csv, "
                        "column `name`): DiffSparse's Wan2.1 training set (paper §4.1)"),
}
VBENCH_DATASETS = ("vbench", "vbench_tiny")


class MissingDataError(FileNotFoundError):
    pass


def dataset_path(dataset: str, resources: str | Path) -> Path | None:
    if dataset == "tiny_prompts":
        return DATA / "tiny_prompts.txt"
    if dataset == "vbench_tiny":
        return DATA / "vbench_tiny_full_info.json"
    if dataset in DATASET_FILES:
        return Path(resources) / DATASET_FILES[dataset][0]
    return None  # imagenet_classes needs no file


# Seeds of the shapes streams: training uses its own seed (0 by default), evaluation conditions and the
# real reference images draw from these, so neither repeats a training image.
SHAPES_CONDITION_SEED, SHAPES_REFERENCE_SEED, SHAPES_TRAINING_SEED = 1000, 2000, 3000


def load_conditions(dataset: str, num_samples: int, resources: str | Path) -> list:
    """The condition of every sample 0..num_samples-1."""
    if dataset in ("shapes_classes", "shapes_captions"):
        from dsbench.shapes import attributes

        samples = [attributes(SHAPES_CONDITION_SEED, i) for i in range(num_samples)]
        return [s.label for s in samples] if dataset == "shapes_classes" else [s.caption for s in samples]
    if dataset == "imagenet_classes":
        return [i % 1000 for i in range(num_samples)]  # 50k samples = 50 per class, as ADM's protocol
    path = dataset_path(dataset, resources)
    if path is None:
        raise ValueError(f"unknown dataset {dataset!r}")
    if not path.is_file():
        raise MissingDataError(f"dataset {dataset!r} is missing: {path} ({DATASET_FILES[dataset][1]})")
    if dataset in VBENCH_DATASETS:  # sample i: video i of the suite's expected "{prompt}-{k}.mp4" files
        return [prompt for prompt, _, _ in vbench_videos(dataset, num_samples, resources)]
    if dataset == "partiprompts":  # sample i: prompt i mod 1,632, so 1,632 x k samples give k per prompt
        from dsbench.datasets import load_partiprompts

        prompts = load_partiprompts(path)
        return [prompts[i % len(prompts)] for i in range(num_samples)]
    if dataset == "coco30k":  # checked against the manifest prepare-coco wrote beside it, if any
        from dsbench.datasets import verify_caption_list

        lines = verify_caption_list(path)
    else:
        lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if dataset == "coco30k" and len(lines) < num_samples:
        raise MissingDataError(f"{path} has {len(lines)} captions; {num_samples} samples need as many")
    return [lines[i % len(lines)] for i in range(num_samples)]  # tiny prompts cycle


def vbench_videos(dataset: str, num_samples: int, resources: str | Path) -> list[tuple[str, int, str]]:
    """(prompt, k, file name) of each sample: every distinct prompt of the suite, 5 videos each, in suite
    order; the sample count must be the suite's (VBench scores a complete set)."""
    from metrics.vbench import FULL_INFO_ENTRIES, expected_videos, load_full_info

    info = load_full_info(dataset_path(dataset, resources), FULL_INFO_ENTRIES if dataset == "vbench" else None)
    videos = expected_videos(info)
    if num_samples != len(videos):
        raise ValueError(f"dataset {dataset!r} has {len(videos)} videos (5 per distinct prompt); "
                         f"num_samples is {num_samples}")
    return videos


def load_training_conditions(dataset: str, num: int, resources: str | Path) -> list:
    """Conditions DiffSparse trains on (no images: the teacher makes the targets). The shapes draw from
    their own stream, disjoint from the evaluation conditions; ImageNet classes cycle from class 0; a
    caption file is used as it is (the paper trains on captions of the same kind as it evaluates on)."""
    if dataset in ("shapes_classes", "shapes_captions"):
        from dsbench.shapes import attributes

        samples = [attributes(SHAPES_TRAINING_SEED, i) for i in range(num)]
        return [s.label for s in samples] if dataset == "shapes_classes" else [s.caption for s in samples]
    return load_conditions(dataset, num, resources)
