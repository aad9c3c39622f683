"""The paper's prompt sets and reference images, from local files (offline, fake inputs)."""
import json

import numpy as np
import pytest
from PIL import Image

from dsbench import config as dsconfig
from dsbench import datasets
from dsbench.conditions import load_conditions
from tests.util import REPO

GIGGLE = '"G I G G L E" painted onto a wall'


def _partiprompts(path, n=datasets.PARTIPROMPTS_COUNT):
    rows = [GIGGLE, "A punk rock squirrel in a studded leather jacket ", "NaN", "a, b; c"]
    rows += [f"prompt number {i}" for i in range(n - len(rows))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Prompt\tCategory\tChallenge\tNote\n" + "".join(f"{r}\tArts\tBasic\t\n" for r in rows),
                    encoding="utf-8")
    return rows


def test_partiprompts_keeps_quotes_and_spaces(tmp_path):
    path = tmp_path / "datasets" / "partiprompts" / "PartiPrompts.tsv"
    rows = _partiprompts(path)
    got = datasets.load_partiprompts(path)
    assert got == rows  # quotes, trailing space and "NaN" intact
    assert got[0] == GIGGLE
    # sample i <-> prompt i mod 1632, so 1632 x k samples give k of each
    conds = load_conditions("partiprompts", 2 * 1632, tmp_path)
    assert conds[0] == conds[1632] == GIGGLE and conds[1] == rows[1]


def test_partiprompts_guards(tmp_path):
    path = tmp_path / "p.tsv"
    _partiprompts(path, n=1631)
    with pytest.raises(datasets.DatasetError, match="1631 prompts, PartiPrompts has 1632"):
        datasets.load_partiprompts(path)
    with pytest.raises(FileNotFoundError, match="google-research/parti"):
        datasets.load_partiprompts(tmp_path / "absent.tsv")
    with pytest.raises(datasets.DatasetError, match=r"1,632 x k"):
        datasets.check_protocol_count("partiprompts", 1000)
    datasets.check_protocol_count("partiprompts", 3264)


def test_protocol_counts_are_config_errors():
    cfg = dsconfig.load(REPO / "config.yaml")
    assert cfg["models"]["pixart_alpha_256"]["num_samples"] == 30_000
    cfg["models"]["pixart_alpha_256"]["num_samples"] = 1000
    with pytest.raises(dsconfig.ConfigError, match="pixart_alpha_256.num_samples: coco30k is evaluated on exactly 30,000"):
        dsconfig.check_references(cfg)
    cfg["models"]["pixart_alpha_256"]["allow_partial"] = True
    dsconfig.check_references(cfg)
    cfg["models"]["dit_xl_2_256"]["num_samples"] = 49_999
    with pytest.raises(dsconfig.ConfigError, match="exactly 50,000"):
        dsconfig.check_references(cfg)


def test_imagenet_classes_are_50_per_class():
    conds = load_conditions("imagenet_classes", 50_000, ".")
    assert np.bincount(conds).tolist() == [50] * 1000


def _coco(tmp_path, n_images=12, caps_per_image=3):
    images = [{"id": 100 + k, "file_name": f"{100 + k:012d}.jpg"} for k in range(n_images)]
    anns = [{"id": 1000 + 10 * k + j, "image_id": 100 + k, "caption": f"photo {k}  caption {j}\n"}
            for k in range(n_images) for j in range(caps_per_image)]
    anns.append({"id": 5000, "image_id": 100, "caption": "photo 0 caption 0"})  # a duplicate text
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for im in images:  # non-square, some greyscale: the crop and the RGB conversion are exercised
        arr = rng.integers(0, 256, (30, 50, 3) if im["id"] % 2 else (40, 24), dtype=np.uint8)
        Image.fromarray(arr).save(src / im["file_name"])
    return path, src


def test_coco_caption_list_is_deterministic_and_hashed(tmp_path):
    ann, _ = _coco(tmp_path)
    rows = datasets.select_coco_captions(ann, n=8, seed=0)
    assert rows == datasets.select_coco_captions(ann, n=8, seed=0)
    assert rows != datasets.select_coco_captions(ann, n=8, seed=1)
    assert len({r["image_id"] for r in rows}) == 8 and [r["index"] for r in rows] == list(range(8))
    assert all("\n" not in r["caption"] and "  " not in r["caption"] for r in rows)
    out = tmp_path / "coco30k"
    manifest = datasets.write_caption_list(rows, out, ann, 0)
    lines = datasets.verify_caption_list(out / datasets.COCO_LIST)
    assert lines == [r["caption"] for r in rows] and manifest["n"] == 8
    # an edited list no longer pairs with its reference images
    (out / datasets.COCO_LIST).write_text("x\n" * 8)
    with pytest.raises(datasets.DatasetError, match="SHA-256 does not match"):
        datasets.verify_caption_list(out / datasets.COCO_LIST)
    with pytest.raises(datasets.DatasetError, match="captions for 12 images; 13 distinct"):
        datasets.select_coco_captions(ann, n=13)


def test_reference_images_cropped_resized_rgb_and_resumable(tmp_path):
    ann, src = _coco(tmp_path)
    rows = datasets.select_coco_captions(ann, n=5, seed=0)
    out = tmp_path / "ref"
    assert datasets.write_reference_images(rows, src, 16, out) == 5
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for f in files:
        with Image.open(f) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
    assert datasets.write_reference_images(rows, src, 16, out) == 0  # nothing rewritten
    (src / rows[0]["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match="1 COCO images are missing"):
        datasets.write_reference_images(rows, src, 16, tmp_path / "ref2")
    assert not (tmp_path / "ref2").exists()  # checked before anything is written


def test_prepare_coco_verb_writes_list_and_references_and_refuses_other_inputs(tmp_path):
    from dsbench.cli import main

    ann, src = _coco(tmp_path)
    res = tmp_path / "resources"
    argv = ["prepare-coco", "--annotations", str(ann), "--images", str(src), "--n", "6", "--res", "16",
            "--resources", str(res)]
    assert main(argv) == 0
    lines = load_conditions("coco30k", 6, res)  # through the manifest's hash check
    assert len(lines) == 6 and len(list((res / "reference" / "coco2017_val_16").glob("*.png"))) == 6
    assert main(argv[:-2] + ["--resources", str(res), "--seed", "1"]) == 2  # other inputs: refused
    assert load_conditions("coco30k", 6, res) == lines  # and nothing was overwritten
