"""ADM suite (FID/sFID/P/R/IS): formulas against torch-fidelity and clean-fid, feature path, reference guards.

Offline and on CPU: the Inception is torch-fidelity's architecture with seeded random weights, written once
per module to a state-dict file and loaded through the production loader.
"""
import numpy as np
import pytest
import torch

from metrics import adm
from metrics.fid import FeatureStats

CPU = torch.device("cpu")
RES = 32  # small images; the network resizes to 299 itself


def _images(seed, n, size=RES):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    adm.write_random_inception_weights(d / "random-inception.pth", seed=0)
    return adm.load_adm_extractor(d, CPU, filename="random-inception.pth")


def _stats_arrays(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"mu": rng.normal(size=adm.POOL_DIM).astype(dtype), "sigma": np.eye(adm.POOL_DIM, dtype=dtype),
            "mu_s": rng.normal(size=adm.SPATIAL_DIM).astype(dtype),
            "sigma_s": np.eye(adm.SPATIAL_DIM, dtype=dtype)}


def _write_ref(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.fixture(scope="module")
def ref_arrays():
    return {**_stats_arrays(), "arr_0": _images(7, 6)}


# ----------------------------------------------------------------------------- precision / recall


def test_manifold_radius_is_kth_neighbour_with_self_at_index_0():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # Point 0: squared distances 0 (self), 1, 9, 36, 100 -> the 3rd neighbour is 36.
    assert adm.manifold_radii(x, k=3).tolist() == [36.0, 25.0, 9.0, 25.0, 81.0]
    with pytest.raises(ValueError, match="at least 4 points"):
        adm.manifold_radii(x[:3], k=3)


# In 2048 dims distances concentrate: a small shift already moves P/R far from 0.5.
@pytest.mark.parametrize("dim,row_batch,shift,scale", [(16, 1000, 0.3, 1.2), (16, 7, 0.3, 1.2),
                                                       (2048, 33, 0.0, 1.02)])
def test_precision_recall_matches_torch_fidelity(dim, row_batch, shift, scale):
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(dim + row_batch)
    gen = rng.normal(0.0, 1.0, (300, dim)).astype(np.float32)
    ref = rng.normal(shift, scale, (200, dim)).astype(np.float32)
    ours = adm.precision_recall(gen, ref, k=3, device=CPU, row_batch=row_batch)
    theirs = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(ref), 3)
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert 0.05 < min(ours) and max(ours) < 0.999  # non-trivial values, so the comparison can fail
    # k matters (a wrong neighbourhood would not pass the comparison above)
    assert adm.precision_recall(gen, ref, k=1, device=CPU) != ours


def test_precision_recall_direction():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(100, 8)).astype(np.float32)
    gen = ref[:50] * 0.1  # collapsed onto the middle of the reference: precise, poor coverage
    p, r = adm.precision_recall(gen, ref, device=CPU)
    assert p == 1.0 and r < 0.5


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_matches_torch_fidelity_unshuffled():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(2).normal(0, 3, (40, adm.LOGITS_DIM))
    s = adm.InceptionScore(split_size=4)
    for lo, hi in [(0, 3), (3, 17), (17, 40)]:  # batches that straddle the splits
        s.update(logits[lo:hi])
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert s.compute() == pytest.approx(theirs["inception_score_mean"], rel=1e-10)
    shuffled = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True)
    assert s.compute() != pytest.approx(shuffled["inception_score_mean"], rel=1e-10)


# ----------------------------------------------------------------------------- feature path


def test_feature_shapes_spatial_slice_and_channel_order(extractor):
    imgs = _images(3, 3)
    captured = {}
    h = extractor.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(o=o.clone()))
    try:
        (f,) = list(adm.adm_features([imgs], extractor, CPU, batch_size=8, resolution=RES))
    finally:
        h.remove()
    assert f.pool.shape == (3, 2048) and f.spatial.shape == (3, 2023) and f.logits.shape == (3, 1008)
    assert f.pool.dtype == f.spatial.dtype == np.float32
    o = captured["o"]
    assert o.shape == (3, 192, 17, 17)
    nhwc = o.permute(0, 2, 3, 1)[..., :7].reshape(3, -1).numpy()  # TF's layout: 7 channels per position
    np.testing.assert_array_equal(f.spatial, nhwc)
    assert not np.allclose(f.spatial, o[:, :7].reshape(3, -1).numpy())  # the NCHW bug would differ

    (swapped,) = list(adm.adm_features([imgs[..., ::-1]], extractor, CPU, batch_size=8))
    assert np.abs(swapped.pool - f.pool).max() > 1e-3 * np.abs(f.pool).max()
    assert np.abs(swapped.spatial - f.spatial).max() > 1e-3 * np.abs(f.spatial).max()


def test_features_do_not_depend_on_batching(extractor):
    imgs = _images(4, 5)
    one = list(adm.adm_features([imgs], extractor, CPU, batch_size=5))
    split = list(adm.adm_features([imgs[:2], imgs[2:3], imgs[3:]], extractor, CPU, batch_size=3))
    assert [len(f.pool) for f in split] == [3, 2]
    for name in adm.AdmFeatures._fields:
        np.testing.assert_allclose(np.concatenate([getattr(f, name) for f in split]), getattr(one[0], name),
                                   rtol=1e-4, atol=1e-5)


def test_feature_input_guards(extractor):
    with pytest.raises(TypeError, match="uint8"):
        list(adm.adm_features([_images(0, 2).astype(np.float32)], extractor, CPU))
    with pytest.raises(ValueError, match=r"\(N,H,W,3\)"):
        list(adm.adm_features([_images(0, 2).transpose(0, 3, 1, 2)], extractor, CPU))
    with pytest.raises(ValueError, match="configured resolution is 256px"):
        list(adm.adm_features([_images(0, 2)], extractor, CPU, resolution=256))


def test_extractor_weights_missing_and_identity(tmp_path, extractor):
    with pytest.raises(FileNotFoundError, match=rf"{adm.INCEPTION_FILE}.*curl -L -o .*releases/download"):
        adm.load_adm_extractor(tmp_path, CPU)
    assert extractor.network_id.startswith("inception-2015-12-05-torch-fidelity-")
    # A file that is not plain tensors is refused before torch-fidelity unpickles it.
    torch.save({"x": torch.zeros(1), "evil": print}, tmp_path / adm.INCEPTION_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        adm.load_adm_extractor(tmp_path, CPU)


# ----------------------------------------------------------------------------- FID / sFID


@pytest.mark.filterwarnings("ignore:FID with n=")
@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fid_sfid_equal_clean_fid(tmp_path):
    from cleanfid.fid import frechet_distance as cfd

    rng = np.random.default_rng(5)
    pool_f, spat_f = rng.normal(size=(64, 24)), rng.normal(0.2, 1.1, (64, 20))
    pool, spatial = FeatureStats(), FeatureStats()
    for lo, hi in [(0, 10), (10, 64)]:
        pool.update(pool_f[lo:hi])
        spatial.update(spat_f[lo:hi])
    a = rng.normal(size=(500, 24)) * 1.3
    b = rng.normal(size=(500, 20)) + 0.5
    ref = adm.AdmReference(tmp_path / "r.npz", a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                           np.cov(b, rowvar=False), n_images=10, resolution=RES)
    fid, sfid = adm.fid_sfid(pool, spatial, ref)
    assert fid == pytest.approx(cfd(pool_f.mean(0), np.cov(pool_f, rowvar=False), ref.mu, ref.sigma), rel=1e-6)
    assert sfid == pytest.approx(cfd(spat_f.mean(0), np.cov(spat_f, rowvar=False), ref.mu_s, ref.sigma_s),
                                 rel=1e-6)
    assert fid > 0.1 and sfid > 0.1


# ----------------------------------------------------------------------------- reference batch


@pytest.mark.parametrize("compressed", [False, True])
def test_reference_loads_and_streams_images(tmp_path, ref_arrays, compressed):
    path = _write_ref(tmp_path / "ref.npz", compressed, **ref_arrays, n=np.int64(1234))
    ref = adm.load_adm_reference(path, resolution=RES)
    assert (ref.n_images, ref.resolution, ref.n_stats) == (6, RES, 1234)
    assert ref.sigma.dtype == np.float64 and ref.sigma_s.shape == (2023, 2023)
    for bs in (4, 6, 100):
        batches = list(ref.images(batch_size=bs))
        assert [len(b) for b in batches] == [min(bs, 6 - i) for i in range(0, 6, bs)]
        np.testing.assert_array_equal(np.concatenate(batches), ref_arrays["arr_0"])


def test_reference_guards(tmp_path, ref_arrays):
    missing = tmp_path / adm.REFERENCE_FILE
    with pytest.raises(FileNotFoundError, match=r"curl -L -o .*VIRTUAL_imagenet256_labeled\.npz https://"):
        adm.load_adm_reference(missing)

    stats = {k: v for k, v in ref_arrays.items() if k != "arr_0"}
    no_keys = _write_ref(tmp_path / "a.npz", mu=stats["mu"], sigma=stats["sigma"])
    with pytest.raises(ValueError, match=r"missing keys \['arr_0', 'mu_s', 'sigma_s'\]"):
        adm.load_adm_reference(no_keys)

    bad_shape = _write_ref(tmp_path / "b.npz", **{**ref_arrays, "mu_s": np.zeros(2048)})
    with pytest.raises(ValueError, match=r"mu_s has shape \(2048,\), expected \(2023,\)"):
        adm.load_adm_reference(bad_shape)

    nan = _write_ref(tmp_path / "c.npz", **{**ref_arrays, "mu": np.full(2048, np.nan)})
    with pytest.raises(ValueError, match="mu has non-finite"):
        adm.load_adm_reference(nan)

    imgs = ref_arrays["arr_0"]
    for name, arr, msg in [("float", imgs.astype(np.float32), "arr_0 must be uint8 images"),
                           ("nchw", imgs.transpose(0, 3, 1, 2).copy(), r"NHWC RGB \(N,H,W,3\), got shape \(6, 3"),
                           ("gray", imgs[..., :1].copy(), "NHWC RGB"),
                           ("rect", imgs[:, :16].copy(), "must be square")]:
        p = _write_ref(tmp_path / f"{name}.npz", **stats, arr_0=arr)
        with pytest.raises(ValueError, match=msg):
            adm.load_adm_reference(p)

    ok = _write_ref(tmp_path / "ok.npz", **ref_arrays)
    with pytest.raises(ValueError, match=r"reference images are 32px but samples are 256px"):
        adm.load_adm_reference(ok, resolution=256)


class _NoNetwork:
    network_id, dims = "stub", adm.INCEPTION_DIMS

    def __call__(self, x):
        raise AssertionError("the cached features should have been used")


def test_reference_feature_cache(tmp_path, ref_arrays, extractor):
    ref = adm.load_adm_reference(_write_ref(tmp_path / "ref.npz", **ref_arrays), resolution=RES)
    cache = adm.default_feature_cache(ref, extractor.network_id)
    assert cache.parent == tmp_path and extractor.network_id in cache.name

    fresh = adm.reference_pool_features(ref, extractor, CPU, batch_size=4, cache_path=cache)
    assert fresh.shape == (6, 2048) and cache.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ref.npz", cache.name])  # no temp file left
    direct = np.concatenate([f.pool for f in adm.adm_features([ref_arrays["arr_0"]], extractor, CPU)])
    np.testing.assert_allclose(fresh, direct, rtol=1e-4, atol=1e-5)

    stub = _NoNetwork()
    stub.network_id = extractor.network_id
    np.testing.assert_array_equal(adm.reference_pool_features(ref, stub, CPU, cache_path=cache), fresh)
    stub.network_id = "another-network"
    with pytest.raises(ValueError, match="stale reference feature cache .*delete it"):
        adm.reference_pool_features(ref, stub, CPU, cache_path=cache)


# ----------------------------------------------------------------------------- adm_metrics


def test_adm_metrics_guards_count_and_resolution(tmp_path, ref_arrays, extractor):
    ref = adm.load_adm_reference(_write_ref(tmp_path / "ref.npz", **ref_arrays))
    gen = _images(8, 5)
    with pytest.raises(ValueError, match="exactly 6 samples .*50000 = 50 per class x 1000.*got 5$"):
        adm.adm_metrics([gen], ref, extractor, CPU, expected_n=6)
    with pytest.raises(ValueError, match="exactly 4 samples .*got at least 5"):
        adm.adm_metrics([gen], ref, extractor, CPU, expected_n=4)
    with pytest.raises(ValueError, match="48px but the configured resolution is 32px"):
        adm.adm_metrics([_images(8, 2, size=48)], ref, extractor, CPU)
    assert list(tmp_path.iterdir()) == [tmp_path / "ref.npz"]  # guards fire before the reference pass


@pytest.mark.slow  # four 2048-d sqrtms on 2 cores (~45 s)
@pytest.mark.filterwarnings("ignore:FID with n=")
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 8 samples in 2048 dims, by design
@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_adm_metrics_end_to_end(tmp_path, ref_arrays, extractor):
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    ref = adm.load_adm_reference(_write_ref(tmp_path / "ref.npz", **ref_arrays), resolution=RES)
    gen = _images(9, 8)
    out = adm.adm_metrics([gen[:3], gen[3:]], ref, extractor, CPU, expected_n=8, batch_size=4, pr_row_batch=3)
    assert adm.default_feature_cache(ref, extractor.network_id).is_file()
    assert (out["n_samples"], out["n_ref_pr"], out["pr_k"]) == (8, 6, 3)
    assert out["network_id"] == extractor.network_id and out["reference_id"] == ref.reference_id

    feats = list(adm.adm_features([gen], extractor, CPU, batch_size=8))[0]
    ref_feats = list(adm.adm_features([ref_arrays["arr_0"]], extractor, CPU, batch_size=8))[0]
    p, r = calculate_precision_recall_full(torch.from_numpy(feats.pool), torch.from_numpy(ref_feats.pool), 3)
    assert (out["precision"], out["recall"]) == pytest.approx((p, r), rel=1e-6)
    pool, spatial = FeatureStats(), FeatureStats()
    pool.update(feats.pool)
    spatial.update(feats.spatial)
    fid, sfid = adm.fid_sfid(pool, spatial, ref)
    assert (out["fid"], out["sfid"]) == pytest.approx((fid, sfid), rel=1e-5)
    assert out["fid"] > 0 and out["sfid"] > 0 and 1.0 <= out["inception_score"] <= 8
