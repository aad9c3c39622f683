"""Groundwork for the proxy models: the procedural shapes data and the pixel-space identity VAE."""
import numpy as np
import torch

from dsbench.shapes import COLORS, NUM_CLASSES, POSITIONS, attributes, make_shapes
from models.pixel_vae import PixelSpaceVAE


def test_shapes_are_deterministic_and_match_their_captions():
    a, la, ca = make_shapes(24, seed=3)
    b, lb, cb = make_shapes(24, seed=3)
    np.testing.assert_array_equal(a, b)
    assert list(la) == list(lb) and ca == cb
    assert a.shape == (24, 32, 32, 3) and a.dtype == np.uint8
    assert set(la) <= set(range(NUM_CLASSES)) and len(set(la)) > 5
    # Sample i does not depend on which batch it came from.
    tail, _, _ = make_shapes(4, seed=3, start=20)
    np.testing.assert_array_equal(tail, a[20:])
    for img, cap, i in zip(a, ca, range(24)):
        s = attributes(3, i)
        assert cap.startswith(f"a {s.color} {s.shape}")
        cx, cy = POSITIONS[s.position]
        pixel = img[int(cy * 32), int(cx * 32)].astype(int)  # the shape's centre has its colour
        assert np.abs(pixel - np.array(COLORS[s.color])).max() <= 40, (cap, pixel)


def test_pixel_vae_is_the_identity_inside_the_real_dit_pipeline():
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from models.base import seeded
    from models.registry import DIT_XL_2

    with seeded(0):
        tr = DiTTransformer2DModel(**dict(DIT_XL_2, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                          sample_size=32, in_channels=3, out_channels=6))
    vae = PixelSpaceVAE()
    z = torch.randn(2, 3, 32, 32)
    assert torch.equal(vae.decode(z).sample, z) and torch.equal(vae.decode(z, return_dict=False)[0], z)
    pipe = DiTPipeline(transformer=tr, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.dtype == torch.float32
    out = pipe(class_labels=[1, 2], num_inference_steps=2, output_type="pt",
               generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
