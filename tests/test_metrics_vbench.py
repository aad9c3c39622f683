"""VBench: official aggregation against hand-computed numbers, the prompt suite, and the worker boundary
(fake backend, this interpreter as the environment's python)."""
import importlib.util
import json
import math
import sys

import pytest

from metrics.external import MissingEnvError, WorkerError
from metrics.vbench import (DIMENSIONS, aggregate, check_files, evaluate_vbench, expected_videos, load_full_info,
                            missing_videos)

SCORES = {
    "subject_consistency": 0.95, "background_consistency": 0.96, "temporal_flickering": 0.98,
    "motion_smoothness": 0.98, "dynamic_degree": 0.60, "aesthetic_quality": 0.60, "imaging_quality": 0.65,
    "object_class": 0.85, "multiple_objects": 0.50, "human_action": 0.90, "color": 0.85,
    "spatial_relationship": 0.70, "scene": 0.40, "appearance_style": 0.20, "temporal_style": 0.24,
    "overall_consistency": 0.25,
}
GRIT = ("object_class", "multiple_objects", "color", "spatial_relationship")


def test_official_aggregation_all_dimensions():
    out = aggregate({d: [s, [{"video_path": "x.mp4", "video_results": s}]] for d, s in SCORES.items()})
    # scripts/constant.py Min/Max; dynamic_degree weighs 0.5, so the quality weights sum to 6.5.
    subject = (0.95 - 0.1462) / (1.0 - 0.1462)
    background = (0.96 - 0.2615) / (1.0 - 0.2615)
    flicker = (0.98 - 0.6293) / (1.0 - 0.6293)
    motion = (0.98 - 0.706) / (0.9975 - 0.706)
    quality = (subject + background + flicker + motion + 0.60 + 0.65 + 0.5 * 0.60) / 6.5
    semantic = (0.85 + 0.50 + 0.90 + 0.85 + 0.70 + 0.40 / 0.8222 + (0.20 - 0.0009) / (0.2855 - 0.0009)
                + 0.24 / 0.364 + 0.25 / 0.364) / 9
    assert out["quality"] == pytest.approx(quality, abs=1e-12)
    assert out["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert out["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    assert out["available"] == pytest.approx({"quality": out["quality"], "semantic": out["semantic"],
                                              "total": out["total"]}, abs=1e-12)
    assert out["normalized"]["dynamic_degree"] == pytest.approx(0.30)
    assert out["raw_mean"] == pytest.approx(sum(SCORES.values()) / 16)
    assert out["raw_mean_quality"] == pytest.approx((0.95 + 0.96 + 0.98 + 0.98 + 0.60 + 0.60 + 0.65) / 7)
    assert out["missing"] == [] and out["raw"] == SCORES
    assert 0.75 < out["total"] < 0.85  # the ~80 % scale of the leaderboard, not the paper's 43.82


def test_missing_dimensions_are_zero_filled_before_normalisation():
    present = {d: s for d, s in SCORES.items() if d not in GRIT and d != "temporal_flickering"}
    out = aggregate(present)  # bare numbers are accepted too
    assert out["missing"] == ["temporal_flickering", *GRIT]
    subject = (0.95 - 0.1462) / (1.0 - 0.1462)
    background = (0.96 - 0.2615) / (1.0 - 0.2615)
    flicker_zero = (0.0 - 0.6293) / (1.0 - 0.6293)  # negative: -1.6976
    motion = (0.98 - 0.706) / (0.9975 - 0.706)
    semantic_rest = 0.90 + 0.40 / 0.8222 + (0.20 - 0.0009) / (0.2855 - 0.0009) + 0.24 / 0.364 + 0.25 / 0.364
    quality = (subject + background + flicker_zero + motion + 0.60 + 0.65 + 0.5 * 0.60) / 6.5
    semantic = (0 + 0 + 0 + 0 + semantic_rest) / 9  # the GRiT dimensions have Min 0: they add 0
    assert flicker_zero == pytest.approx(-1.69760, abs=1e-5)
    assert out["quality"] == pytest.approx(quality, abs=1e-12)
    assert out["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert out["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    q_av = (subject + background + motion + 0.60 + 0.65 + 0.5 * 0.60) / 5.5
    s_av = semantic_rest / 5
    assert out["available"]["quality"] == pytest.approx(q_av, abs=1e-12)
    assert out["available"]["semantic"] == pytest.approx(s_av, abs=1e-12)
    assert out["available"]["total"] == pytest.approx((4 * q_av + s_av) / 5, abs=1e-12)
    assert out["raw_mean"] == pytest.approx(sum(present.values()) / 11)
    only_quality = aggregate({"subject_consistency": 0.95})
    assert only_quality["available"]["semantic"] is None and only_quality["available"]["total"] is None


def test_aggregation_guards():
    with pytest.raises(ValueError, match=r"unknown \['sharpness'\]"):
        aggregate({"sharpness": 0.5})
    with pytest.raises(ValueError, match="scene is not finite"):
        aggregate({"scene": [math.nan, []]})


# ----------------------------------------------------------------------------- prompt suite

INFO = [
    {"prompt_en": "a cat", "dimension": ["subject_consistency", "dynamic_degree"]},
    {"prompt_en": "a still lake", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a dog and a cat", "dimension": ["multiple_objects"],
     "auxiliary_info": {"multiple_objects": {"object": "dog and cat"}}},
    {"prompt_en": "a cat", "dimension": ["overall_consistency"]},  # repeated prompt, as in the real suite
]


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(INFO))
    return path


def test_suite_loader_and_expected_videos(tmp_path, suite):
    info = load_full_info(suite, expected=None)
    names = [n for _, _, n in expected_videos(info)]
    assert names == [f"{p}-{i}.mp4" for p in ("a cat", "a still lake", "a dog and a cat") for i in range(5)]
    with_flicker = expected_videos(info, flicker_candidates=True)
    assert [i for p, i, _ in with_flicker if p == "a still lake"] == list(range(25))
    assert [n for _, _, n in expected_videos(info, ["overall_consistency"])] == [f"a cat-{i}.mp4" for i in range(5)]
    assert len(missing_videos(tmp_path / "nowhere", info)) == 15
    with pytest.raises(ValueError, match="has 4 entries; VBench's standard suite has 946"):
        load_full_info(suite)
    with pytest.raises(FileNotFoundError, match="prompt suite not found.*ships in the vbench wheel"):
        load_full_info(tmp_path / "missing.json")
    suite.write_text(json.dumps([{"prompt_en": "x", "dimension": ["sharpness"]}]))
    with pytest.raises(ValueError, match=r"unknown dimensions \['sharpness'\]"):
        load_full_info(suite, expected=None)


def test_real_backend_checks_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)ViCLIP/ViClip-InternVid-10M-FLT\.pth.*"
                                                r"ViCLIP/bpe_simple_vocab_16e6\.txt\.gz"):
        check_files(["temporal_style", "overall_consistency"], tmp_path / "cache")
    check_files(["temporal_flickering"], tmp_path / "cache")  # needs no model


# ----------------------------------------------------------------------------- the worker boundary

def make_videos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


DIMS = ["subject_consistency", "dynamic_degree", "temporal_flickering", "multiple_objects", "overall_consistency"]
FAKE = {"subject_consistency": 0.9, "dynamic_degree": 0.4, "temporal_flickering": 0.97, "multiple_objects": 0.3,
        "overall_consistency": 0.2}


def test_fake_worker_end_to_end(tmp_path, suite):
    info = load_full_info(suite, expected=None)
    videos, filtered = tmp_path / "videos", tmp_path / "filtered"
    make_videos(videos, [n for _, _, n in expected_videos(info, flicker_candidates=True)])  # 25 flicker candidates
    make_videos(filtered, [f"a still lake-{i}.mp4" for i in range(5)])  # what VBench's static filter keeps
    out = evaluate_vbench(videos, suite, tmp_path / "work", dimensions=DIMS, backend="fake", fake_scores=FAKE,
                          videos_by_dimension={"temporal_flickering": filtered}, expected_entries=None,
                          python=sys.executable)
    grit_ok = importlib.util.find_spec("detectron2") is not None
    got = {d: s for d, s in FAKE.items() if grit_ok or d != "multiple_objects"}
    assert out["raw"] == got
    assert out == {**out, **aggregate(got)}  # every aggregation of exactly those scores
    if not grit_ok:
        assert list(out["unavailable"]) == ["multiple_objects"]
        assert "detectron2 is not installed" in out["unavailable"]["multiple_objects"]
        assert "multiple_objects" in out["missing"]
    assert [v["video_path"] for v in out["per_video"]["temporal_flickering"]] == \
        [str(filtered / f"a still lake-{i}.mp4") for i in range(5)]
    assert [v["video_path"] for v in out["per_video"]["overall_consistency"]] == \
        [str(videos / f"a cat-{i}.mp4") for i in range(5)]
    assert out["backend"] == "fake" and out["versions"]["python"]


def test_boundary_errors(tmp_path, suite):
    videos = tmp_path / "videos"
    make_videos(videos, [f"a cat-{i}.mp4" for i in range(4)])
    kw = dict(backend="fake", expected_entries=None, python=sys.executable)
    with pytest.raises(FileNotFoundError, match=r"1 VBench videos missing from .*a cat-4\.mp4"):
        evaluate_vbench(videos, suite, tmp_path / "w", dimensions=["subject_consistency"], **kw)
    # allow_missing scores what is there; a dimension with no video at all fails in the worker.
    with pytest.raises(WorkerError, match=r"(?s)vbench worker failed \(exit 1\).*no videos for scene"):
        evaluate_vbench(videos, suite, tmp_path / "w", dimensions=["subject_consistency", "scene"],
                        allow_missing=True, **kw)
    (videos / "prompts.txt").write_text("x")
    with pytest.raises(ValueError, match="holds files other than"):
        evaluate_vbench(videos, suite, tmp_path / "w", dimensions=["subject_consistency"], **kw)
    with pytest.raises(ValueError, match="bad VBench dimensions"):
        evaluate_vbench(videos, suite, tmp_path / "w", dimensions=["subject_consistency"] * 2, **kw)
    # Real backend, no model needed (temporal_flickering): the next thing missing is the environment.
    make_videos(tmp_path / "flicker", [f"a still lake-{i}.mp4" for i in range(5)])
    with pytest.raises(MissingEnvError, match=r"vbench metric environment is missing.*\.venv-vbench/\.done"):
        evaluate_vbench(tmp_path / "flicker", suite, tmp_path / "w", dimensions=["temporal_flickering"],
                        expected_entries=None, envs_root=tmp_path / "envs", cache=tmp_path / "cache")


def test_dimension_table_is_complete():
    from metrics.vbench import CACHE_FILES, DIM_WEIGHT, NORMALIZE, QUALITY_LIST, SEMANTIC_LIST

    assert (len(QUALITY_LIST), len(SEMANTIC_LIST)) == (7, 9)
    assert set(DIMENSIONS) == set(NORMALIZE) == set(DIM_WEIGHT) == set(CACHE_FILES)
    assert sum(DIM_WEIGHT[d] for d in QUALITY_LIST) == 6.5
