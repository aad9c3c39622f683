"""Training a class-conditional DiT proxy on the procedural shapes, in pixel space (groundwork for issue 4).

Deterministic from a seed: the data stream (dsbench/shapes.py), the initial weights and the noise come
from seeded generators, and the loop runs under a forked, seeded global RNG because DiT's own label
dropout (10 % to the null class, which classifier-free guidance needs) draws from it. Writes the weights as safetensors (diffusers' save_pretrained),
their SHA-256, the loss log and the command that reproduces them. Loading checks the hash.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dsbench.io import write_json, write_text
from dsbench.shapes import make_shapes

WEIGHTS = "diffusion_pytorch_model.safetensors"


def dit_proxy_config(layers: int = 6, heads: int = 4, head_dim: int = 32) -> dict:
    from models.registry import DIT_XL_2

    return dict(DIT_XL_2, num_layers=layers, num_attention_heads=heads, attention_head_dim=head_dim,
                sample_size=32, patch_size=2, in_channels=3, out_channels=3)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_dit_proxy(out_dir: str | Path, *, steps: int, batch: int = 64, lr: float = 3e-4, seed: int = 0,
                    arch: dict | None = None, progress: bool = True) -> dict:
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from models.base import seeded

    out_dir = Path(out_dir)
    arch = arch or dit_proxy_config()
    with seeded(seed):
        model = DiTTransformer2DModel(**arch)
    model.train()
    noise_sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    log = []
    with seeded(seed + 1):  # the model's label dropout draws from the global RNG
        for step in tqdm(range(steps), desc="train dit proxy", disable=not progress):
            images, labels, _ = make_shapes(batch, seed=seed, start=step * batch)
            x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = torch.from_numpy(labels).long()
            t = torch.randint(0, 1000, (batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            pred = model(noise_sched.add_noise(x0, noise, t), timestep=t, class_labels=y).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append(loss.item())
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_text(out_dir / "loss.csv", "step,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(log)))
    info = {"sha256": sha256(out_dir / WEIGHTS), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "final_loss_mean_last_10": float(np.mean(log[-10:])),
            "command": " ".join(shlex.quote(a) for a in ["dsbench", *sys.argv[1:]]) if sys.argv else ""}
    write_json(out_dir / "provenance.json", info)
    return info


def load_dit_proxy(folder: str | Path):
    """The trained proxy, after checking the weights against their recorded SHA-256."""
    from diffusers import DiTTransformer2DModel

    folder = Path(folder)
    info = json.loads((folder / "provenance.json").read_text())
    got = sha256(folder / WEIGHTS)
    if got != info["sha256"]:
        raise ValueError(f"{folder / WEIGHTS}: SHA-256 {got} does not match the recorded {info['sha256']}; "
                         f"retrain with: {info['command']}")
    return DiTTransformer2DModel.from_pretrained(folder).eval()
