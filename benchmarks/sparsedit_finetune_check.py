"""Did fine-tuning help? A fine-tuned SparseDiT of the DiT proxy against the same plan converted zero-shot
(no training) and the full DiT proxy, on held-out shapes (a seed the fine-tune never saw):

1. ε-MSE at several t (same images, noise and labels for every model; each SparseDiT at its inference
   grid, the continuous density's g at that t);
2. PSNR of 20-step DDIM samples (CFG 1.5, the proxy's sampling setting) against the full DiT proxy's,
   same labels and seeds.

    OMP_NUM_THREADS=1 python benchmarks/sparsedit_finetune_check.py [--finetuned models/proxies/proxy_dit_sparsedit]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HELDOUT_SEED = 424_242           # the fine-tune's shapes stream uses seed 0 (its `finetune.seed`)
TIMESTEPS = (20, 100, 250, 400, 600, 800, 950)


def models(finetuned: Path):
    from diffusers import DiTTransformer2DModel

    from models.proxy import proxy_dir, verified
    from models.sparsedit import SparseDiTTransformer2DModel, convert_dit

    info = verified(finetuned)
    verified(proxy_dir("proxy_dit"))
    dit = DiTTransformer2DModel.from_pretrained(proxy_dir("proxy_dit") / "transformer").eval()
    zero_shot, _ = convert_dit(dit, **info["plan"])
    tuned = SparseDiTTransformer2DModel.from_pretrained(finetuned / "transformer")
    return {"full DiT": dit, "zero-shot": zero_shot.eval(), "fine-tuned": tuned.eval()}, info


@torch.no_grad()
def eps_mse(nets: dict, n: int, batch: int = 32) -> dict:
    from diffusers import DDPMScheduler

    from dsbench.shapes import make_shapes

    sched = DDPMScheduler(num_train_timesteps=1000)
    images, labels, _ = make_shapes(n, seed=HELDOUT_SEED, size=32)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(labels).long()
    out = {name: {} for name in nets}
    for t in TIMESTEPS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        tt = torch.full((n,), t)
        xt = sched.add_noise(x0, noise, tt)
        for name, net in nets.items():
            err = [((net(xt[i:i + batch], timestep=tt[i:i + batch], class_labels=y[i:i + batch]).sample[:, :3]
                     - noise[i:i + batch]) ** 2).mean() for i in range(0, n, batch)]
            out[name][t] = float(torch.stack(err).mean())
    return out


def psnr_vs_full(nets: dict, samples: int, steps: int, guidance: float) -> dict:
    from models import get_adapter

    adapter = get_adapter("proxy_dit")
    pipe = adapter.build("proxy", scheduler="ddim")
    labels = [i % 12 for i in range(samples)]
    seeds = [10_000 + i for i in range(samples)]
    images = {}
    for name, net in nets.items():
        pipe.transformer = net.requires_grad_(False)
        with torch.no_grad():
            images[name] = adapter.sample_float(pipe, labels, seeds, num_steps=steps, guidance_scale=guidance)
    ref = images["full DiT"]
    mse = {k: ((v - ref) ** 2).flatten(1).mean(1) for k, v in images.items() if k != "full DiT"}
    return {k: float((10 * torch.log10(1 / m.clamp(min=1e-12))).mean()) for k, m in mse.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--finetuned", type=Path, default=Path("models/proxies/proxy_dit_sparsedit"))
    p.add_argument("--n", type=int, default=256, help="held-out images per t")
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = p.parse_args()
    nets, info = models(args.finetuned)
    mse = eps_mse(nets, args.n)
    print(f"held-out ε-MSE ({args.n} shapes, seed {HELDOUT_SEED}); plan {info['plan']}")
    print("t      " + "".join(f"{name:>12}" for name in nets))
    for t in TIMESTEPS:
        print(f"{t:<7}" + "".join(f"{mse[name][t]:12.5f}" for name in nets))
    psnr = psnr_vs_full(nets, args.samples, args.steps, args.guidance)
    print(f"PSNR vs the full DiT proxy, {args.samples} samples, {args.steps} DDIM steps, CFG {args.guidance}: "
          + ", ".join(f"{k} {v:.2f} dB" for k, v in psnr.items()))
    if args.out:
        args.out.write_text(json.dumps({"eps_mse": mse, "psnr_db": psnr, "plan": info["plan"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
