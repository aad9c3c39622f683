"""The CPU proxies: committed weights that load only with their recorded hashes, deterministic training,
the word tokenizer, the shapes classifier, and what the proxies' conditions and references are."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dsbench.conditions import SHAPES_REFERENCE_SEED, load_conditions
from dsbench.shapes import attributes, make_shapes, parse_caption
from models import get_adapter
from models.proxy import PROXY_ROOT, ProxyWeightsError, verified, word_tokenizer

PROXIES = ["proxy_dit", "proxy_pixart", "shapes_classifier"]


@pytest.mark.parametrize("name", PROXIES)
def test_committed_proxy_matches_its_recorded_hashes(name):
    info = verified(PROXY_ROOT / name)
    assert info["name"] == name and info["sha256"]
    # How to reproduce it, bit for bit: CPU GEMM reductions depend on the thread count.
    assert info["command"].startswith(f"OMP_NUM_THREADS={info['threads']} dsbench train-proxy --name {name} ")


@pytest.mark.parametrize("name", ["proxy_dit", "proxy_pixart"])
def test_tampered_or_missing_weights_are_refused_before_loading(name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(PROXY_ROOT / name, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    adapter = get_adapter(name)
    with pytest.raises(ProxyWeightsError, match="does not match the recorded"):
        adapter.build("proxy", scheduler="ddim", weights=str(folder))
    weights.unlink()
    with pytest.raises(ProxyWeightsError, match="missing"):
        adapter.build("proxy", scheduler="ddim", weights=str(folder))
    with pytest.raises(ProxyWeightsError, match="train_proxies"):
        adapter.build("proxy", scheduler="ddim", weights=str(tmp_path / "nothing"))


def test_proxy_source_is_only_for_proxies():
    with pytest.raises(ValueError, match="not a trained proxy"):
        get_adapter("tiny_pixart").build("proxy", scheduler="dpm_solver_pp")


def test_committed_proxies_sample_images_with_the_real_pipelines():
    for name, conds in [("proxy_dit", [0, 11]), ("proxy_pixart", ["a red circle at the left", "a blue square in the center"])]:
        adapter = get_adapter(name)
        pipe = adapter.build("proxy", scheduler="ddim" if name == "proxy_dit" else "dpm_solver_pp")
        assert adapter.token_grid() == (16, 16) and len(adapter.blocks(pipe)) == 6
        with torch.inference_mode():
            a = adapter.sample(pipe, conds, [1, 2], num_steps=4, guidance_scale=1.5)
            b = adapter.sample(pipe, conds[:1], [1], num_steps=4, guidance_scale=1.5)
        assert a.shape == (2, 32, 32, 3) and a.dtype == torch.uint8
        # A sample does not depend on its batch, up to one grey level: small-batch CPU GEMMs are not
        # bit-identical across batch sizes (README, Conventions).
        assert (a[:1].int() - b.int()).abs().max() <= 1
        assert not torch.equal(a[0], a[1])


def test_word_tokenizer_reads_every_caption_word():
    tok = word_tokenizer(16)
    ids = tok(["a red circle at the left", "a purple circle", ""], padding="max_length", max_length=16,
              truncation=True, return_tensors="pt")
    assert ids.input_ids.shape == (3, 16)
    assert tok.unk_token_id not in ids.input_ids[0].tolist()       # every shapes word is in the vocabulary
    assert tok.unk_token_id in ids.input_ids[1].tolist()           # an unknown word is <unk>, not dropped
    assert ids.attention_mask[0].sum() == 7 and ids.attention_mask[2].sum() == 1   # 6 words + </s>; "" -> </s>
    assert tok.decode(ids.input_ids[0], skip_special_tokens=True) == "a red circle at the left"


def test_captions_parse_back_to_their_attributes():
    for i in range(50):
        s = attributes(5, i)
        assert parse_caption(s.caption) == s
    with pytest.raises(ValueError, match="does not name"):
        parse_caption("a photo of a cat")


def test_proxy_conditions_are_fixed_per_index_and_unseen_in_training():
    caps = load_conditions("shapes_captions", 20, "resources")
    labels = load_conditions("shapes_classes", 20, "resources")
    assert caps == load_conditions("shapes_captions", 40, "resources")[:20]
    assert [parse_caption(c).color for c in caps[:5]] and all(0 <= y < 12 for y in labels)
    _, train_labels, train_caps = make_shapes(20, seed=0)
    assert caps != train_caps


def test_shapes_classifier_recognises_fresh_renders():
    from metrics.shapes_classifier import Alignment, load_shapes_classifier

    net = load_shapes_classifier(PROXY_ROOT / "shapes_classifier", "cpu")
    images, labels, captions = make_shapes(400, seed=SHAPES_REFERENCE_SEED + 1)
    by_caption, by_class = Alignment(net, "cpu"), Alignment(net, "cpu")
    by_caption.update(images, captions)
    by_class.update(images, list(labels))
    assert by_caption.compute() > 0.9 and by_class.compute() > 0.95
    # noise matches nothing it is asked for
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    chance = Alignment(net, "cpu")
    chance.update(noise, captions)
    assert chance.compute() < 0.2


@pytest.mark.parametrize("name", ["proxy_dit", "proxy_pixart"])
def test_training_is_deterministic_and_learns(name, tmp_path):
    from dsbench.proxy_train import train_proxy

    a = train_proxy(name, tmp_path / "a", steps=30, batch=4, progress=False)
    b = train_proxy(name, tmp_path / "b", steps=30, batch=4, progress=False)
    assert a["sha256"] == b["sha256"]                     # same seed, same weights
    assert verified(tmp_path / "a")["command"] == a["command"]
    losses = np.loadtxt(tmp_path / "a" / "loss.csv", delimiter=",", skiprows=1)[:, 1]
    assert len(losses) == 30 and losses[-10:].mean() < losses[:10].mean()
    pipe = get_adapter(name).build("proxy", scheduler="ddim", weights=str(tmp_path / "a"))
    assert pipe.transformer.config.in_channels == 3


def test_learning_rate_warms_up_then_decays_to_zero():
    from dsbench.proxy_train import WARMUP, _optimizer

    opt, sched = _optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, steps=1000)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / WARMUP) and lrs[WARMUP] == pytest.approx(1e-3)
    assert lrs[:WARMUP + 1] == sorted(lrs[:WARMUP + 1])                  # linear warm-up
    assert lrs[WARMUP:] == sorted(lrs[WARMUP:], reverse=True)            # then cosine decay
    assert lrs[(1000 + WARMUP) // 2] == pytest.approx(0.5e-3, rel=1e-2) and lrs[-1] < 1e-7


def test_train_proxy_rejects_bad_settings(tmp_path):
    from dsbench.proxy_train import train_proxy

    with pytest.raises(ValueError, match="unknown proxy"):
        train_proxy("proxy_flux", tmp_path)
    with pytest.raises(ValueError, match="steps and batch"):
        train_proxy("proxy_dit", tmp_path, steps=0)
    assert not any(tmp_path.iterdir())                     # refused before anything is written


def test_cli_train_proxy_never_overwrites_without_force(tmp_path, dsbench_cli):
    out = tmp_path / "cls"
    p = dsbench_cli("train-proxy", "--name", "shapes_classifier", "--out", str(out), "--steps", "2", "--batch", "4")
    assert p.returncode == 0, p.stderr
    before = (out / "model.safetensors").read_bytes()
    p = dsbench_cli("train-proxy", "--name", "shapes_classifier", "--out", str(out), "--steps", "3")
    assert p.returncode == 2 and "already holds trained weights; pass --force" in p.stderr
    assert (out / "model.safetensors").read_bytes() == before


def test_sample_grid_lays_out_one_row_per_method(tmp_path):
    from PIL import Image

    from dsbench.grid import sample_grid

    rows = {"real": make_shapes(5, seed=1)[0], "none": make_shapes(5, seed=2)[0]}
    out = sample_grid(rows, tmp_path / "g.png", scale=2, pad=1)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (2 * (64 + 1), 110 + 5 * (64 + 1), 3)
    # the second row's first tile is sample 0 of "none", upscaled by nearest neighbour
    np.testing.assert_array_equal(img[65:65 + 64:2, 110:110 + 64:2], rows["none"][0])
    with pytest.raises(ValueError, match="differ in shape"):
        sample_grid({"a": rows["real"], "b": rows["none"][:3]}, tmp_path / "h.png")


def test_shapes_perceptual_distance_is_lpips_like():
    from metrics.networks import load_lpips

    net = load_lpips("shapes", "cpu")
    images = torch.from_numpy(make_shapes(8, seed=3)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    other = torch.from_numpy(make_shapes(8, seed=4)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    noisy = (images + 0.02 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    with torch.no_grad():
        same, near, far = net(images, images), net(images, noisy), net(images, other)
    assert same.shape == (8,) and torch.all(same == 0)
    assert torch.all(near < far)                             # slight noise is closer than another image
    assert torch.allclose(net(images, other), net(other, images))
