"""ImageReward through the real subprocess boundary, with the worker's stdlib-only fake backend.

The "environment python" is this interpreter (or, in one test, a bare venv with no packages at all, which
proves the fake worker needs nothing of ours or of ImageReward's).
"""
import hashlib
import json
import sys

import numpy as np
import pytest

from metrics import external
from metrics.external import MissingEnvError, WorkerError, env_python, run_worker, worker_env
from metrics.imagereward import ImageRewardScore, encode_png

PROMPTS = ["a red car", "two dogs on a beach", "a bowl of soup"]


def expected_fake(prompt: str, image: np.ndarray) -> float:
    # Written out independently of the worker: sha256(prompt, NUL, PNG bytes), first 8 bytes → [-2, 2).
    digest = hashlib.sha256(prompt.encode("utf-8") + b"\x00" + encode_png(image)).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 4 - 2


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 16, 20, 3), dtype=np.uint8)


def fake_metric(tmp_path, **kw):
    return ImageRewardScore(backend="fake", python=sys.executable, workdir=tmp_path / "ir", device="cpu", **kw)


def test_fake_rewards_through_the_worker(tmp_path, images):
    prompts = PROMPTS + PROMPTS  # 2 images per prompt, added in two updates
    ir = fake_metric(tmp_path, expected_n=6)
    ir.update(images[:4], prompts[:4])
    ir.update(images[4:], prompts[4:])
    out = ir.compute()
    want = [expected_fake(p, im) for p, im in zip(prompts, images)]
    assert out["rewards"] == pytest.approx(want, abs=1e-12)
    assert out["image_reward"] == pytest.approx(sum(want) / 6, abs=1e-12)
    assert (out["n"], out["n_prompts"], out["backend"]) == (6, 3, "fake")
    assert out["per_prompt"]["a bowl of soup"] == pytest.approx((want[2] + want[5]) / 2, abs=1e-12)
    # PNGs by sample index (never by prompt), request/result/logs kept in the workdir.
    assert sorted(p.name for p in (tmp_path / "ir" / "images").iterdir())[-1] == "000005.png"
    request = json.loads((tmp_path / "ir" / "imagereward_request.json").read_text())
    assert [it["prompt"] for it in request["items"]] == prompts


def test_guards(tmp_path, images):
    ir = fake_metric(tmp_path, expected_n=6)
    with pytest.raises(TypeError, match="uint8"):
        ir.update(images / 255.0, PROMPTS * 2)
    with pytest.raises(ValueError, match=r"\(N,H,W,3\) RGB"):
        ir.update(images[..., :1], PROMPTS * 2)
    with pytest.raises(ValueError, match="one prompt per image: 6 images, 1 prompts"):
        ir.update(images, "a red car")
    with pytest.raises(ValueError, match="before any update"):
        ir.compute()
    ir.update(images[:3], PROMPTS)
    with pytest.raises(ValueError, match=r"expects 6 samples \(PartiPrompts: 1632 × k\), got 3"):
        ir.compute()
    ir.update(images[3:], ["a red car"] * 3)
    with pytest.raises(ValueError, match="same number of images: 1 for 'two dogs on a beach', 4 for 'a red car'"):
        ir.compute()


def test_real_backend_checks_files_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageReward\.pt.*hf download THUDM/ImageReward"):
        ImageRewardScore(backend="real", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="needs a weights_dir"):
        ImageRewardScore(backend="real")
    for f in ("ImageReward.pt", "med_config.json"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="models--bert-base-uncased.*HF_HOME="):
        ImageRewardScore(backend="real", weights_dir=tmp_path, hf_home=tmp_path / "hf")


def test_missing_env_names_the_build_target(tmp_path):
    with pytest.raises(MissingEnvError, match=r"imagereward metric environment is missing: .*\.venv-imagereward.*"
                                              r"snakemake --cores 1 .*\.venv-imagereward/\.done"):
        env_python("imagereward", tmp_path / "envs")
    (tmp_path / "envs" / ".venv-imagereward" / "bin").mkdir(parents=True)
    (tmp_path / "envs" / ".venv-imagereward" / "bin" / "python").symlink_to(sys.executable)
    with pytest.raises(MissingEnvError, match="incomplete"):  # a build that never wrote its marker
        run_worker("imagereward", {"items": []}, tmp_path / "w", backend="fake", envs_root=tmp_path / "envs")


def test_worker_failure_carries_its_stderr(tmp_path, images):
    ir = fake_metric(tmp_path)
    ir.update(images[:1], PROMPTS[:1])
    (tmp_path / "ir" / "images" / "000000.png").unlink()  # the worker cannot read its image
    with pytest.raises(WorkerError, match=r"(?s)imagereward worker failed \(exit 1\).*FileNotFoundError.*000000\.png"):
        ir.compute()


def test_worker_environment():
    ir_env = worker_env("imagereward", hf_home="/x/hf")
    assert ir_env["HF_HUB_OFFLINE"] == "1" and ir_env["HF_HOME"] == "/x/hf"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in ir_env and "PYTHONPATH" not in ir_env
    vb_env = worker_env("vbench", vbench_cache_dir="/x/vb")
    assert vb_env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and vb_env["VBENCH_CACHE_DIR"] == "/x/vb"
    with pytest.raises(ValueError, match="valid: imagereward, vbench"):
        worker_env("clip")


def test_fake_worker_runs_in_a_bare_venv(tmp_path, images):
    """create_env + env_python + the worker in an environment holding no package at all."""
    req = tmp_path / "empty.txt"
    req.write_text("# nothing: the fake backend is stdlib-only\n")
    python = external.create_env("imagereward", req, tmp_path / "envs", pip_args=["--no-index", "-q"])
    assert env_python("imagereward", tmp_path / "envs") == python
    assert external.env_info("imagereward", tmp_path / "envs")["requirements_sha256"] == \
        hashlib.sha256(req.read_bytes()).hexdigest()
    ir = ImageRewardScore(backend="fake", workdir=tmp_path / "ir", envs_root=tmp_path / "envs", device="cpu")
    ir.update(images[:2], PROMPTS[:2])
    assert ir.compute()["rewards"] == pytest.approx([expected_fake(p, im) for p, im in zip(PROMPTS, images[:2])])
