"""Pairwise PSNR / LPIPS fidelity on a tiny seeded LPIPS, offline."""
import math

import numpy as np
import pytest
import torch

from metrics.fidelity import PSNR_CAP_DB, Fidelity
from metrics.networks import load_lpips


@pytest.fixture(scope="module")
def lp():
    return load_lpips("tiny", "cpu")


def _images(seed, n=4, size=64, hi=256):
    return np.random.default_rng(seed).integers(0, hi, (n, size, size, 3), dtype=np.uint8)


def test_identical_images(lp):
    a = _images(0)
    fi = Fidelity(lp, batch_size=3)
    fi.update(a, a.copy())
    assert fi.compute() == {"psnr": PSNR_CAP_DB, "ssim": 1.0, "lpips": 0.0, "n": 4}


@pytest.mark.parametrize("offset", [1, 2, 5])
def test_constant_offset_gives_analytic_psnr(lp, offset):
    a = _images(1, hi=256 - offset)
    fi = Fidelity(lp)
    fi.update(a, a + np.uint8(offset))
    out = fi.compute()
    assert out["psnr"] == pytest.approx(20 * math.log10(255 / offset), rel=1e-12)
    assert out["lpips"] > 0


def test_streaming_mean_over_pairs(lp):
    a, b = _images(2), _images(3)
    whole = Fidelity(lp)
    whole.update(a, b)
    split = Fidelity(lp)
    split.update(a[:1], b[:1])
    split.update(a[1:], b[1:])
    w, s = whole.compute(), split.compute()
    assert s["n"] == w["n"] == 4
    assert s["psnr"] == pytest.approx(w["psnr"], rel=1e-12)
    assert s["lpips"] == pytest.approx(w["lpips"], rel=1e-5)
    assert s["ssim"] == pytest.approx(w["ssim"], rel=1e-12)
    assert -1 <= w["ssim"] < 0.5  # independent noise images are structurally unrelated


def test_ssim_is_torchmetrics_and_tracks_damage():
    """Per-pair SSIM equals torchmetrics' class metric on the same pair, and falls as noise grows."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    from metrics.fidelity import ssim_per_pair

    a = _images(8, n=1)
    rng = np.random.default_rng(9)
    got = []
    for sd in (2, 10, 40):
        b = np.clip(a + rng.normal(0, sd, a.shape), 0, 255).astype(np.uint8)
        m = StructuralSimilarityIndexMeasure(data_range=255.0)
        m.update(*(torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b)))
        got.append(float(ssim_per_pair(a, b)[0]))
        assert got[-1] == pytest.approx(float(m.compute()), rel=1e-6)  # the class keeps float32 state
    assert 1 > got[0] > got[1] > got[2]


def test_psnr_only(lp):
    a = _images(4)
    fi = Fidelity(None)
    fi.update(a, a)
    assert fi.compute() == {"psnr": PSNR_CAP_DB, "ssim": 1.0, "lpips": None, "n": 4}


def test_input_checks(lp):
    a = _images(5)
    with pytest.raises(ValueError, match="same shape"):
        Fidelity(lp).update(a, a[:, :32, :32])
    with pytest.raises(TypeError, match="uint8"):
        Fidelity(lp).update(a, a.astype(np.float32))


def test_tiny_lpips_deterministic(lp):
    a, b = _images(6, n=2), _images(7, n=2)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(lp(x, y), load_lpips("tiny", "cpu")(x, y))


def test_missing_alexnet_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as e:
        load_lpips("alex", "cpu")
    assert "download.pytorch.org" in str(e.value)
