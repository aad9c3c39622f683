"""The paper's prompt sets and reference images, prepared from files the user has locally.

Nothing is downloaded. Each loader checks what it reads (row counts, a recorded SHA-256) and says
where to get a missing file. Sample i always pairs with entry i of a list; duplicate captions stay
separate samples (images are keyed by index, never by text).
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from dsbench.conditions import PARTIPROMPTS_URL
from dsbench.io import sha256_file

PARTIPROMPTS_COUNT = 1632
COCO_COUNT = 30_000
COCO_LIST = "COCO_caption_prompts_30k.txt"  # the name ToCa's protocol uses; ours is built by prepare-coco
# Samples each protocol is defined on: FID-30k (PixArt), ADM's 50 per class x 1000 (DiT, FID-50k).
VBENCH_VIDEOS = 4_720  # VBench's standard suite: 944 distinct prompts × 5 videos
PROTOCOL_SAMPLES = {"coco30k": COCO_COUNT, "imagenet_classes": 50_000, "vbench": VBENCH_VIDEOS}


class DatasetError(ValueError):
    pass


def load_partiprompts(path: str | Path) -> list[str]:
    """The 1,632 prompts of PartiPrompts.tsv, in file order, exactly as written.

    QUOTE_NONE: default CSV parsing strips the quotes of prompts such as '"G I G G L E" painted ...'
    and would join lines; ``keep_default_na=False`` keeps prompts like "NaN"-looking text as text.
    Trailing spaces are kept (ten prompts have them).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PartiPrompts file missing: {path} (get PartiPrompts.tsv from {PARTIPROMPTS_URL})")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    if "Prompt" not in df.columns:
        raise DatasetError(f"{path}: no 'Prompt' column (columns: {list(df.columns)})")
    prompts = df["Prompt"].tolist()
    if len(prompts) != PARTIPROMPTS_COUNT:
        raise DatasetError(f"{path}: {len(prompts)} prompts, PartiPrompts has {PARTIPROMPTS_COUNT}")
    return prompts


def check_protocol_count(dataset: str, n: int) -> None:
    """Refuse a sample count the metric's protocol is not defined on (FID-30k, FID-50k, 1,632 x k)."""
    if dataset == "partiprompts":
        if n % PARTIPROMPTS_COUNT:
            raise DatasetError(f"PartiPrompts samples must be 1,632 x k (images per prompt), got {n}")
    elif dataset in PROTOCOL_SAMPLES and n != PROTOCOL_SAMPLES[dataset]:
        raise DatasetError(f"{dataset} is evaluated on exactly {PROTOCOL_SAMPLES[dataset]:,} samples, got {n:,} "
                           "(set `allow_partial: true` on the model for a smaller, non-comparable run)")


# ----------------------------------------------------------------------------- COCO-30k


def select_coco_captions(annotations: str | Path, n: int = COCO_COUNT, seed: int = 0) -> list[dict]:
    """n (image, caption) pairs from a COCO captions JSON: n distinct images drawn with `seed`, one of
    each image's captions (also drawn with `seed`). Deterministic in the file and the seed."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file missing: {path} (annotations/captions_*.json from "
                                "http://images.cocodataset.org/annotations/annotations_trainval2017.zip)")
    data = json.loads(path.read_text(encoding="utf-8"))
    files = {im["id"]: im["file_name"] for im in data["images"]}
    captions: dict[int, list[str]] = {}
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        captions.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))  # one line each
    ids = sorted(captions)
    if len(ids) < n:
        raise DatasetError(f"{path} has captions for {len(ids):,} images; {n:,} distinct images are needed "
                           "(COCO val2017 has 5,000: use the train2017 or val2014 captions)")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(ids, n))
    return [{"index": i, "image_id": k, "file_name": files[k], "caption": rng.choice(captions[k])}
            for i, k in enumerate(chosen)]


def write_caption_list(rows: list[dict], out_dir: str | Path, source: str, seed: int) -> dict:
    """``COCO_LIST`` (the sampler's list, line i = sample i), ``captions.tsv`` (index, image id,
    file, caption) and ``manifest.json`` with the list's SHA-256, all written atomically."""
    from dsbench.io import write_json, write_text

    out = Path(out_dir)
    write_text(out / COCO_LIST, "".join(r["caption"] + "\n" for r in rows))
    write_text(out / "captions.tsv", "index\timage_id\tfile_name\tcaption\n"
               + "".join(f"{r['index']}\t{r['image_id']}\t{r['file_name']}\t{r['caption']}\n" for r in rows))
    manifest = {"n": len(rows), "source": str(source), "seed": seed,
                "captions_sha256": sha256_file(out / COCO_LIST)}
    write_json(out / "manifest.json", manifest)
    return manifest


def verify_caption_list(path: str | Path, expected_sha256: str | None = None) -> list[str]:
    """The caption list, checked against the manifest beside it (or an explicit hash)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption list missing: {path} (build it with `dsbench prepare-coco`)")
    if expected_sha256 is None and (path.parent / "manifest.json").is_file():
        expected_sha256 = json.loads((path.parent / "manifest.json").read_text())["captions_sha256"]
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise DatasetError(f"{path}: SHA-256 does not match the recorded {expected_sha256[:12]}...; the caption "
                           "list changed since it was prepared, so samples and references would not pair")
    text = path.read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def center_crop_resize(img, res: int):
    """ADM / clean-fid convention for real images: centre square crop of the short side, then PIL
    bicubic to res x res, RGB (COCO has greyscale and CMYK images)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.resize((res, res), Image.BICUBIC, box=box)


def write_reference_images(rows: list[dict], images_dir: str | Path, res: int, out_dir: str | Path) -> int:
    """The images of the chosen captions, cropped and resized, as ``{index:06d}.png``; existing files
    are kept (a rerun resumes). Every source image must exist before anything is written."""
    from PIL import Image

    from dsbench.io import atomic_path

    src, out = Path(images_dir), Path(out_dir)
    missing = [r["file_name"] for r in rows if not (src / r["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} COCO images are missing under {src} (first: {missing[0]})")
    written = 0
    for r in rows:
        dst = out / f"{r['index']:06d}.png"
        if dst.is_file():
            continue
        with Image.open(src / r["file_name"]) as im, atomic_path(dst) as tmp:
            center_crop_resize(im, res).save(tmp, format="PNG")
        written += 1
    return written
