"""The ADM suite's code on the proxies: the shapes classifier as extractor and our own ADM-format batch.

This is what the smoke DAG's DiT proxy runs for Table 2's sFID, IS and precision/recall columns.
"""
import dataclasses

import numpy as np
import pytest
import torch

from dsbench.shapes import make_shapes
from metrics import adm
from metrics.shapes_classifier import ShapesAdmExtractor, load_shapes_classifier
from models.proxy import proxy_dir


@pytest.fixture(scope="module")
def extractor():
    return ShapesAdmExtractor(load_shapes_classifier(proxy_dir("shapes_classifier"), "cpu"))


def test_extractor_contract(extractor):
    images, labels, _ = make_shapes(40, seed=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        pool, spatial, logits = extractor(x)
        conv = extractor.net.body[:-2](x.float() / 127.5 - 1)
    assert (pool.shape[1], spatial.shape[1], logits.shape[1]) == extractor.dims == (16, 32, 12)
    assert torch.equal(pool, extractor.net(x.float()))
    # NHWC slice: position (0, 0)'s first two channels, then position (0, 1)'s.
    assert torch.equal(spatial[:, :4], torch.stack([conv[:, 0, 0, 0], conv[:, 1, 0, 0], conv[:, 0, 0, 1],
                                                    conv[:, 1, 0, 1]], 1))
    assert torch.allclose(logits.exp().sum(1), torch.ones(40), atol=1e-5)  # a joint distribution
    assert (logits.argmax(1).numpy() == labels).all()  # ordered as dsbench.shapes' class labels


def test_renders_against_their_own_batch_score_perfectly(tmp_path, extractor):
    images = make_shapes(300, seed=5)[0]
    ref = adm.write_adm_reference(tmp_path / "ref.npz", [images[:200], images[200:]], extractor, "cpu")
    assert (ref.n_images, ref.n_stats, ref.network_id) == (300, 300, extractor.network_id)
    r = adm.adm_metrics([images], ref, extractor, "cpu", expected_n=300, ref_cache=None)
    assert abs(r["fid"]) < 1e-6 and abs(r["sfid"]) < 1e-6
    assert r["precision"] == r["recall"] == 1.0
    assert 10 < r["inception_score"] <= 12  # 12 classes drawn about evenly, each recognised


def test_degraded_samples_score_worse(tmp_path, extractor):
    ref = adm.write_adm_reference(tmp_path / "ref.npz", [make_shapes(300, seed=5)[0]], extractor, "cpu")
    good = make_shapes(100, seed=6)[0]
    blurred = ((good.astype(np.int32) + np.roll(good, 2, 1) + np.roll(good, 2, 2)) // 3).astype(np.uint8)
    a = adm.adm_metrics([good], ref, extractor, "cpu", ref_cache=None)
    b = adm.adm_metrics([blurred], ref, extractor, "cpu", ref_cache=None)
    assert b["fid"] > a["fid"] and b["sfid"] > a["sfid"] and b["precision"] < a["precision"]


def test_reference_from_another_network_is_refused(tmp_path, extractor):
    ref = adm.write_adm_reference(tmp_path / "ref.npz", [make_shapes(20, seed=5)[0]], extractor, "cpu")
    other = ShapesAdmExtractor(extractor.net)
    other.network_id = "shapes-adm-retrained"
    with pytest.raises(ValueError, match="made with shapes-adm-.* but the samples' features come from "
                                         "shapes-adm-retrained; rebuild the reference"):
        adm.adm_metrics([make_shapes(8, seed=6)[0]], ref, other, "cpu", ref_cache=None)
    # ADM's own file has no network id; its moments must still have the extractor's sizes.
    inception_sized = dataclasses.replace(ref, network_id=None, mu=np.zeros(adm.POOL_DIM))
    with pytest.raises(ValueError, match="2048-d pool / 32-d spatial, the extractor gives 16 / 32"):
        adm.check_reference_network(inception_sized, extractor)
    with pytest.raises(ValueError, match=r"mu has shape \(16,\), expected \(2048,\)"):
        adm.load_adm_reference(ref.path)  # default dims: ADM's Inception
