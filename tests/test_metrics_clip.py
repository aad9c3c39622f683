"""CLIP score (correct mode) on a tiny seeded open_clip model, offline."""
import numpy as np
import pytest
import torch

from metrics.clip_score import ClipScore
from metrics.networks import ClipBundle, load_clip

CAPTIONS = ["a red car", "two dogs on a beach", "a bowl of soup", "a city at night", "a cat", "snow"]


@pytest.fixture(scope="module")
def bundle():
    return load_clip("tiny", None, "cpu")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)


def test_cosine_range_and_mean(bundle, images):
    cs = ClipScore(bundle)
    cs.update(images, CAPTIONS)
    cos = (cs.image_embeddings(images) * cs.text_embeddings(CAPTIONS)).sum(-1)
    assert torch.all(cos.abs() <= 1 + 1e-6)
    assert cs.n == 6
    assert cs.compute() == pytest.approx(float(cos.double().mean()), abs=1e-6)


def test_batch_split_invariance(bundle, images):
    whole = ClipScore(bundle)
    whole.update(images, CAPTIONS)
    split = ClipScore(bundle)
    for lo, hi in [(0, 1), (1, 3), (3, 6)]:
        split.update(images[lo:hi], CAPTIONS[lo:hi])
    assert split.compute() == pytest.approx(whole.compute(), abs=1e-6)
    split.reset()
    with pytest.raises(ValueError, match="before any update"):
        split.compute()


def test_float_images_rejected(bundle, images):
    with pytest.raises(TypeError, match="uint8"):
        ClipScore(bundle).update(images / 255.0, CAPTIONS)


def test_argument_checks(bundle, images):
    with pytest.raises(ValueError, match="valid modes: correct, toca_compat"):
        ClipScore(bundle, mode="cosine")
    with pytest.raises(ValueError, match="one caption per image"):
        ClipScore(bundle).update(images, CAPTIONS[:2])


def test_channel_order_matters(bundle, images):
    cs = ClipScore(bundle)
    rgb = cs.image_embeddings(images[:1])
    bgr = cs.image_embeddings(np.ascontiguousarray(images[:1, ..., ::-1]))
    assert (rgb - bgr).abs().max() > 1e-4


def test_zero_norm_embedding_raises(bundle, images):
    class ZeroImage(torch.nn.Module):
        def encode_image(self, x):
            return torch.zeros(len(x), 32)

        def encode_text(self, t):
            return bundle.model.encode_text(t)

    cs = ClipScore(ClipBundle(ZeroImage(), bundle.preprocess, bundle.tokenizer, "zero"))
    with pytest.raises(ValueError, match="zero-norm"):
        cs.update(images[:2], CAPTIONS[:2])


def test_tiny_clip_deterministic(bundle):
    other = load_clip("tiny", None, "cpu")
    for (ka, va), (kb, vb) in zip(bundle.model.state_dict().items(), other.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_missing_clip_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin") as e:
        load_clip("ViT-L-14-quickgelu", tmp_path / "open_clip_pytorch_model.bin", "cpu")
    assert "timm/vit_large_patch14_clip_224.openai" in str(e.value)


def test_correct_mode_is_manual_100_cos(bundle, images):
    """``x100`` is torchmetrics' scale: 100 x the cosine of the normalised open_clip embeddings."""
    import torch.nn.functional as F

    cs = ClipScore(bundle)
    cs.update(images, CAPTIONS)
    x = torch.stack([bundle.preprocess(__import__("PIL.Image").Image.fromarray(im)) for im in images])
    with torch.no_grad():
        fi = bundle.model.encode_image(x)
        ft = bundle.model.encode_text(bundle.tokenizer(CAPTIONS))
    manual = 100 * F.cosine_similarity(fi, ft, dim=-1).double().mean()
    assert cs.x100() == pytest.approx(float(manual), rel=1e-5)


@pytest.fixture(scope="module")
def hf_clip():
    from metrics.networks import load_transformers_clip

    return load_transformers_clip("tiny", None, "cpu")


def test_toca_compat_scores_a_near_black_image(hf_clip, images):
    """The artefact, documented: ToCa's float [0,1] input is rescaled by 1/255 again inside the HF
    processor, so the score is (almost) that of a black image, whatever the image shows; the same
    image as uint8 (the correct protocol) scores far from it."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from metrics.clip_score import TocaCompatClipScore

    model, processor = hf_clip
    caps = CAPTIONS[:1]

    def raw(img_tensor):  # torchmetrics' own score of one image, as the library computes it
        m = CLIPScore(model_name_or_path=lambda: (model, processor))
        m.update([img_tensor], caps)
        return float(m.compute())

    img = images[:1]
    compat = TocaCompatClipScore(model, processor)
    compat.update(img, caps)
    black = raw(torch.zeros(3, 40, 40, dtype=torch.uint8))
    as_uint8 = raw(torch.from_numpy(img[0]).permute(2, 0, 1).contiguous())
    assert compat.compute() == pytest.approx(raw(torch.from_numpy(img[0]).permute(2, 0, 1).float() / 255) / 100)
    assert abs(100 * compat.compute() - black) < 0.01 * abs(as_uint8 - black)
    assert compat.n == 1


def test_toca_compat_checks(hf_clip, images):
    from metrics.clip_score import TocaCompatClipScore

    compat = TocaCompatClipScore(*hf_clip)
    with pytest.raises(ValueError, match="before any update"):
        compat.compute()
    with pytest.raises(TypeError, match="uint8"):
        compat.update(images / 255.0, CAPTIONS)
    with pytest.raises(ValueError, match="one caption per image"):
        compat.update(images, CAPTIONS[:2])
    with pytest.raises(ValueError, match="TocaCompatClipScore"):
        ClipScore(None, mode="toca_compat")
    with pytest.raises(ValueError, match="unknown CLIP score mode 'float'"):
        ClipScore(None, mode="float")


def test_missing_transformers_clip(tmp_path):
    from metrics.networks import load_transformers_clip

    with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14"):
        load_transformers_clip("ViT-L-14-quickgelu", tmp_path / "clip", "cpu")
