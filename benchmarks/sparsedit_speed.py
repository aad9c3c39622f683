"""SparseDiT against DiT at a large token grid, random weights, on a CPU: measured speedup of one transformer
forward beside the ratio of MACs that forward executes (every matmul, attention products included, counted
on the meta device by metrics.macs.paper_macs_per_forward with the Poolingformers as executed).

The default is DiT-XL/2's layer plan (2 Poolingformers + 4 SDTMs [1, 3, 1, 1] + 2 top = 28 blocks) at a
narrow width (2 heads × 32) on a 64×64 token grid (a 128×128 latent, patch 2: N = 4,096), where attention
dominates as it does at high resolution. SparseDiT runs at the grids of the paper's range r ∈ [0.61, 0.86]
at this N (r_min -> 40×40, the mid rate 0.735 -> 33×33, r_max -> 24×24). Speed and MACs do not depend on the
weights, so seeded random ones serve; timings are interleaved (metrics/latency.py).

    python benchmarks/sparsedit_speed.py [--tokens 64] [--heads 2] [--head-dim 32] [--batch 1] [--repeats 3]
                                         [--threads 1]
"""
from __future__ import annotations

import argparse

import torch
from diffusers import DiTTransformer2DModel

from metrics.latency import speedups, time_interleaved
from metrics.macs import paper_macs_per_forward
from models.base import seeded
from models.registry import DIT_XL_2
from models.sparsedit import SparseDiTTransformer2DModel
from models.sparsedit_density import sparse_side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="token grid side (latent side / patch 2)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    arch = dict(DIT_XL_2, num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                sample_size=2 * args.tokens)
    with seeded(0):
        dit = DiTTransformer2DModel(**arch).eval().requires_grad_(False)
    sparse = SparseDiTTransformer2DModel.from_dit(dit).eval().requires_grad_(False)
    with torch.device("meta"):
        dit_meta, sparse_meta = DiTTransformer2DModel(**arch), SparseDiTTransformer2DModel(**arch)
    dit_meta.to("meta"), sparse_meta.to("meta")

    n = args.tokens ** 2
    grids = {"r_min": sparse_side(0.61, n, args.tokens), "mid": sparse_side(0.735, n, args.tokens),
             "r_max": sparse_side(0.86, n, args.tokens)}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, arch["in_channels"], 2 * args.tokens, 2 * args.tokens, generator=gen)
    t = torch.full((args.batch,), 500)
    y = torch.arange(args.batch) % 1000

    def run(model, g=None):
        def go():
            with torch.inference_mode():
                model(x, timestep=t, class_labels=y, **({} if g is None else {"sparse_grid": g}))
        return go

    runs = {"none": run(dit), **{f"sparsedit g={g} ({k})": run(sparse, g) for k, g in grids.items()}}
    macs = {"none": paper_macs_per_forward(dit_meta),
            **{f"sparsedit g={g} ({k})": paper_macs_per_forward(sparse_meta, g, pooling="ours") for k, g in grids.items()}}
    timings = time_interleaved(runs, repeats=args.repeats, threads=args.threads)
    sp = speedups(timings)
    width = args.heads * args.head_dim
    print(f"DiT vs SparseDiT, 28 blocks, width {width}, {args.tokens}×{args.tokens} = {n} tokens, batch {args.batch}, "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds; MACs: one forward of one image, every matmul")
    print(f"{'':<26} {'median':>10} {'GMACs':>8} {'speedup':>8} {'MAC ratio':>10} {'measured/MAC':>13}")
    for name, tm in timings.items():
        ratio = macs["none"] / macs[name]
        print(f"{name:<26} {tm['median_s'] * 1e3:8.0f} ms {macs[name] / 1e9:8.2f} {sp[name]['speedup']:7.2f}x "
              f"{ratio:9.2f}x {sp[name]['speedup'] / ratio:12.2f}")


if __name__ == "__main__":
    main()
