"""FID pipeline: streaming stats, clean-fid equivalence, reference-stat guards (offline, tiny net)."""
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from metrics import fid
from metrics.networks import load_fid_network

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    return load_fid_network("tiny", None, CPU)


def _images(seed, n, size=32, lo=0, hi=256):
    return np.random.default_rng(seed).integers(lo, hi, (n, size, size, 3), dtype=np.uint8)


def _stats(imgs, net, batch_size=64):
    s = fid.FeatureStats()
    for f in fid.image_features([imgs], net, CPU, batch_size=batch_size):
        s.update(f)
    return s


def test_feature_stats_streaming_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(5.0, 0.3, (257, 16))  # large mean vs std: stresses the covariance sums
    s = fid.FeatureStats()
    for lo, hi in [(0, 1), (1, 100), (100, 101), (101, 257)]:
        s.update(feats[lo:hi])
    assert s.n == 257
    np.testing.assert_allclose(s.mean(), feats.mean(axis=0), rtol=1e-8)
    np.testing.assert_allclose(s.cov(), np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-12)

    meta = {"resolution": 32, "network_id": "x", "n": 257}
    path = tmp_path / "ref.npz"
    s.save(path, meta)
    mu, sigma, n, meta2 = fid.FeatureStats.load(path)
    assert (n, meta2) == (257, meta)
    np.testing.assert_array_equal(mu, s.mean())
    np.testing.assert_array_equal(sigma, s.cov())
    assert os.listdir(tmp_path) == ["ref.npz"]  # no temp file left behind


def test_feature_stats_needs_samples():
    s = fid.FeatureStats()
    s.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        s.cov()
    with pytest.raises(ValueError, match="2 samples"):
        fid.frechet_distance(s, s)


@pytest.mark.filterwarnings("ignore:FID with n=")  # 20 images < 64 dims, as in clean-fid itself
@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # clean-fid -> scipy
def test_matches_clean_fid_compute_fid(tmp_path, tiny):
    from cleanfid import fid as cfid
    from cleanfid.resize import make_resizer

    sets = {"a": _images(1, 20, size=48), "b": _images(2, 20, size=48, lo=30, hi=220)}
    for name, imgs in sets.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(tmp_path / name / f"{i:03d}.png")  # lossless round trip
    resizer = make_resizer("PIL", False, "bicubic", (tiny.input_size,) * 2)
    kw = dict(mode="clean", custom_fn_resize=resizer, device=CPU, num_workers=0, batch_size=8,
              verbose=False)

    # Same resizer, same HWC->CHW, same batches of 8 -> bit-identical features.
    ours = {k: np.concatenate(list(fid.image_features([v], tiny, CPU, batch_size=8)))
            for k, v in sets.items()}
    theirs = cfid.get_folder_features(str(tmp_path / "a"), tiny, **kw)
    np.testing.assert_array_equal(ours["a"], theirs)

    ref = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), custom_feat_extractor=tiny,
                           use_dataparallel=False, **kw)
    got = fid.frechet_distance(_stats(sets["a"], tiny, 8), _stats(sets["b"], tiny, 8))
    # Not bit-exact: clean-fid takes np.mean of float32 features (float32 accumulation),
    # we accumulate in float64; np.cov is float64 in both.
    assert got > 0
    assert got == pytest.approx(ref, rel=1e-6)


def test_fid_self_zero_shift_positive(tiny):
    imgs = _images(3, 96)
    a = _stats(imgs, tiny)
    trace = float(np.trace(a.cov()))
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * trace)
    shifted = np.clip(imgs.astype(int) + 60, 0, 255).astype(np.uint8)
    assert fid.frechet_distance(a, _stats(shifted, tiny)) > 1e-3 * trace


def test_image_feature_batching_is_irrelevant(tiny):
    imgs = _images(4, 10)
    one = np.concatenate(list(fid.image_features([imgs], tiny, CPU, batch_size=4)))
    split = np.concatenate(list(fid.image_features([imgs[:3], imgs[3:7], imgs[7:]], tiny, CPU, batch_size=4)))
    np.testing.assert_array_equal(one, split)
    assert one.shape == (10, 64)


def test_image_validation(tiny):
    ok = _images(5, 2)
    with pytest.raises(TypeError, match="uint8"):
        list(fid.image_features([ok / 255.0], tiny, CPU))
    with pytest.raises(ValueError, match="square"):
        list(fid.image_features([ok[:, :, :16]], tiny, CPU))
    with pytest.raises(ValueError, match="RGB"):
        list(fid.image_features([np.zeros((2, 32, 32, 4), np.uint8)], tiny, CPU))
    with pytest.raises(ValueError, match="resolution"):
        list(fid.image_features([ok], tiny, CPU, resolution=64))


def test_reference_stats_roundtrip_and_guards(tmp_path, tiny):
    imgs = _images(6, 80)
    names = [f"{i:06d}.png" for i in range(80)]
    path = tmp_path / "ref.npz"
    meta = fid.make_reference_stats([imgs[:50], imgs[50:]], names, tiny, CPU, 32, path)
    assert meta == {"resolution": 32, "resize": "clean-bicubic", "network_id": "tiny-seed0",
                    "n": 80, "image_list_sha256": fid.image_list_sha256(names)}
    assert fid.fid_from_batches([imgs], path, tiny, CPU, 32) == pytest.approx(0.0, abs=1e-6)

    with pytest.raises(ValueError, match="resolution 32 != 64"):
        fid.fid_from_batches([imgs], path, tiny, CPU, 64)
    with pytest.raises(ValueError, match="network"):
        fid.check_compatible(meta, 32, types.SimpleNamespace(network_id="inception-2015-12-05", resize_id="clean-bicubic"))
    with pytest.raises(ValueError, match="resize"):
        fid.check_compatible({**meta, "resize": "tf1-bilinear-inside"}, 32, tiny)


def test_tiny_network_deterministic_and_rng_neutral():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_fid_network("tiny", None, CPU)
    assert torch.equal(torch.rand(3), expected)  # construction did not consume global RNG
    b = load_fid_network("tiny", None, CPU)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert (a.input_size, a.network_id) == (64, "tiny-seed0")


def test_missing_inception_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt") as e:
        load_fid_network("inception", tmp_path, CPU)
    assert "nvlabs-fi-cdn.nvidia.com" in str(e.value)
    with pytest.raises(ValueError, match="valid"):
        load_fid_network("vgg", tmp_path, CPU)


@pytest.mark.filterwarnings("ignore:FID with n=")
@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_legacy_tensorflow_mode_matches_clean_fid(tmp_path):
    """clean-fid's own legacy_tensorflow pipeline (identity resizer outside, TF1 bilinear inside the
    network) on PNG folders gives the same features and FID as our streaming path."""
    from cleanfid import fid as cfid

    net = load_fid_network("tiny", None, CPU, mode="legacy_tensorflow")
    assert net.resize_inside and net.resize_id == "tf1-bilinear-inside"
    sets = {"a": _images(11, 20, size=48), "b": _images(12, 20, size=48, lo=30, hi=220)}
    for name, imgs in sets.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(tmp_path / name / f"{i:03d}.png")
    kw = dict(mode="legacy_tensorflow", device=CPU, num_workers=0, batch_size=8, verbose=False)
    theirs = cfid.get_folder_features(str(tmp_path / "a"), net, **kw)
    ours = np.concatenate(list(fid.image_features([sets["a"]], net, CPU, batch_size=8)))
    np.testing.assert_array_equal(ours, theirs)
    # The mode matters: the clean pipeline's features differ from the TF1-bilinear ones.
    clean = np.concatenate(list(fid.image_features([sets["a"]], load_fid_network("tiny", None, CPU), CPU)))
    assert np.abs(clean - ours).max() > 1e-3

    ref = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), custom_feat_extractor=net,
                           use_dataparallel=False, **kw)
    got = fid.frechet_distance(_stats(sets["a"], net, 8), _stats(sets["b"], net, 8))
    assert got == pytest.approx(ref, rel=1e-6)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_frechet_distance_is_clean_fids_on_the_same_features():
    """Given the same float64 features, our streamed moments reproduce np.mean/np.cov to round-off
    and the distance is clean-fid's fid_from_feats (float64 features: clean-fid's float32 mean is
    the only source of difference in the image-level test above)."""
    from cleanfid import fid as cfid

    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, (300, 24)), rng.normal(0.2, 1.1, (300, 24))
    sa, sb = fid.FeatureStats(), fid.FeatureStats()
    for k in range(0, 300, 64):
        sa.update(a[k:k + 64])
        sb.update(b[k:k + 64])
    ref = cfid.fid_from_feats(a, b)
    moments = [(x.mean(axis=0), np.cov(x, rowvar=False), len(x)) for x in (a, b)]
    assert fid.frechet_distance(*moments) == ref  # the same function on the same moments: exact
    assert fid.frechet_distance(sa, sb) == pytest.approx(ref, rel=1e-12)


def test_matches_torchmetrics_fid_with_the_same_network():
    """torchmetrics' FrechetInceptionDistance with our feature network injected (images already at
    the network's input size, so no resize is involved on either side): rtol 1e-6."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = load_fid_network("tiny", None, CPU)

    class OnUint8(torch.nn.Module):  # torchmetrics hands the module uint8 NCHW
        num_features = 64

        def forward(self, x):
            return net(x.float())

    real, fake = _images(21, 100, size=64), _images(22, 100, size=64, lo=20, hi=200)
    tm = FrechetInceptionDistance(feature=OnUint8(), reset_real_features=False)
    for imgs, is_real in ((real, True), (fake, False)):
        for k in range(0, 100, 32):
            tm.update(torch.from_numpy(imgs[k:k + 32]).permute(0, 3, 1, 2).contiguous(), real=is_real)
    ours = fid.frechet_distance(_stats(fake, net, 32), _stats(real, net, 32))
    assert ours == pytest.approx(float(tm.compute()), rel=1e-6)


def test_fid_mode_guards(tmp_path, tiny):
    with pytest.raises(ValueError, match="unknown FID mode 'legacy_pytorch'"):
        load_fid_network("tiny", None, CPU, mode="legacy_pytorch")
    imgs = _images(6, 40)
    path = tmp_path / "ref.npz"
    fid.make_reference_stats([imgs], [str(i) for i in range(40)], tiny, CPU, 32, path)
    legacy = load_fid_network("tiny", None, CPU, mode="legacy_tensorflow")
    with pytest.raises(ValueError, match="another fid_mode"):
        fid.fid_from_batches([imgs], path, legacy, CPU, 32)
