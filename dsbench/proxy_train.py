"""Training the CPU proxies on the procedural shapes: the DiT and PixArt denoisers and the shapes classifier.

Deterministic from a seed: the data stream (dsbench/shapes.py, sample i is a function of (seed, i)),
the initial weights and every noise draw come from seeded generators, and the loop runs under a
forked, seeded global RNG because DiT's own label dropout (10 % to the null class, which
classifier-free guidance needs) draws from it. The denoisers learn epsilon on DDPM's linear schedule
(the training schedule of DiT and PixArt-α) with an EMA of the weights (diffusers' EMAModel), which is
what gets saved. Output: diffusers folders (safetensors) + provenance.json with every weight file's
SHA-256, the settings and the command that reproduces them, and loss.csv.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dsbench.io import write_json, write_text
from dsbench.shapes import make_shapes
from models.proxy import PROVENANCE, weight_hashes

# name -> default settings; sized so each trains in about 20-30 minutes on 2 CPU cores.
DEFAULTS = {
    "proxy_dit": dict(steps=4000, batch=32, lr=1e-3),
    "proxy_pixart": dict(steps=3000, batch=32, lr=1e-3),
    "shapes_classifier": dict(steps=800, batch=128, lr=2e-3),
}
CAPTION_DROPOUT = 0.1  # as PixArt's and DiT's training: the empty caption / null class teaches CFG
WARMUP = 100
MIN_SNR_GAMMA = 5.0


def _images(batch: int, seed: int, step: int):
    images, labels, captions = make_shapes(batch, seed=seed, start=step * batch)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float(), labels, captions


class _Denoiser:
    """One family's training step: model, conditioning and the eps-prediction forward."""

    def __init__(self, name: str, seed: int):
        from models.base import seeded
        from models.registry import get_preset

        self.preset = get_preset(name)
        self.family = self.preset.family
        with seeded(seed):
            if self.family == "dit":
                from diffusers import DiTTransformer2DModel

                self.model = DiTTransformer2DModel(**self.preset.transformer)
            else:
                from diffusers import PixArtTransformer2DModel

                from models.proxy import text_encoder

                self.model = PixArtTransformer2DModel(**self.preset.transformer)
                self.tokenizer, self.encoder = text_encoder(self.preset.text_encoder, self.preset.text_tokens, seed)
        _zero_init_residual_outputs(self.model)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _embed(self, caption: str):
        """Frozen encoder output of one caption, as the pipeline computes it (cached: few distinct captions)."""
        if caption not in self._cache:
            t = self.tokenizer([caption], padding="max_length", max_length=self.preset.text_tokens,
                               truncation=True, add_special_tokens=True, return_tensors="pt")
            with torch.no_grad():
                h = self.encoder(t.input_ids, attention_mask=t.attention_mask)[0]
            self._cache[caption] = (h[0], t.attention_mask[0])
        return self._cache[caption]

    def __call__(self, noisy, t, labels, captions, gen):
        if self.family == "dit":  # the model drops labels to the null class itself
            return self.model(noisy, timestep=t, class_labels=torch.from_numpy(labels).long()).sample
        drop = torch.rand(len(captions), generator=gen) < CAPTION_DROPOUT
        embs = [self._embed("" if d else c) for c, d in zip(captions, drop.tolist())]
        return self.model(noisy, timestep=t, encoder_hidden_states=torch.stack([e[0] for e in embs]),
                          encoder_attention_mask=torch.stack([e[1] for e in embs]),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample

    def save(self, out: Path, ema) -> None:
        ema.copy_to(self.model.parameters())
        self.model.save_pretrained(out / "transformer", safe_serialization=True)
        if self.family == "pixart":
            self.encoder.save_pretrained(out / "text_encoder", safe_serialization=True)


def _zero_init_residual_outputs(model: torch.nn.Module) -> None:
    """adaLN-Zero (DiT, Peebles & Xie 2023, and PixArt-α's init): every block starts as the identity and
    the output layer at zero, which makes short trainings converge much faster. By hand: diffusers'
    constructors use default inits and offer no such option."""
    zero = []
    for block in model.transformer_blocks:
        if hasattr(block.norm1, "linear"):          # DiT: AdaLayerNormZero's shift/scale/gate projection
            zero.append(block.norm1.linear)
        if getattr(block, "attn2", None) is not None:  # PixArt: cross-attention output
            zero.append(block.attn2.to_out[0])
    zero += [m for m in (getattr(model, "proj_out_1", None), getattr(model, "proj_out_2", None),
                         getattr(model, "proj_out", None)) if m is not None]
    with torch.no_grad():
        for m in zero:
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()


def train_proxy(name: str, out_dir: str | Path, *, steps: int | None = None, batch: int | None = None,
                lr: float | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train proxy `name` (proxy_dit, proxy_pixart or shapes_classifier) into `out_dir`; returns its provenance."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown proxy {name!r}; trainable: {', '.join(DEFAULTS)}")
    settings = dict(DEFAULTS[name])
    settings.update({k: v for k, v in dict(steps=steps, batch=batch, lr=lr).items() if v is not None})
    if settings["steps"] < 1 or settings["batch"] < 1 or not settings["lr"] > 0:
        raise ValueError(f"steps and batch must be >= 1 and lr > 0, got {settings}")
    out_dir = Path(out_dir)
    train = _train_classifier if name == "shapes_classifier" else _train_denoiser
    log = train(name, out_dir, seed=seed, progress=progress, **settings)
    write_text(out_dir / "loss.csv", "step,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(log)))
    threads = torch.get_num_threads()  # CPU GEMM reductions, so the bits, depend on it
    info = {"name": name, "sha256": weight_hashes(out_dir), "seed": seed, **settings,
            "final_loss_mean_last_50": float(np.mean(log[-50:])), "torch": torch.__version__,
            "threads": threads, "command": f"OMP_NUM_THREADS={threads} " + shlex.join(
                ["dsbench", "train-proxy", "--name", name, "--out", str(out_dir), "--seed", str(seed),
                 *[f"--{k}={v}" for k, v in settings.items()]])}
    write_json(out_dir / PROVENANCE, info)  # written last: its presence marks a finished training
    return info


def _optimizer(params, lr: float, steps: int):
    """AdamW with a linear warm-up, then a cosine decay to zero: the short runs end at a low learning rate,
    where the last few hundred steps refine edges instead of jittering around them."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def factor(s: int) -> float:
        if s < WARMUP:
            return (s + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - WARMUP) / max(1, steps - WARMUP))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _train_denoiser(name, out_dir, *, steps, batch, lr, seed, progress):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    from models.base import seeded

    d = _Denoiser(name, seed)
    d.model.train()
    noise_sched = DDPMScheduler(num_train_timesteps=1000)  # linear betas 1e-4..0.02, as DiT and PixArt
    opt, lr_sched = _optimizer(d.model.parameters(), lr, steps)
    ema = EMAModel(d.model.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3)
    gen, log = torch.Generator().manual_seed(seed), []
    with seeded(seed + 1):  # DiT's label dropout draws from the global RNG
        for step in tqdm(range(steps), desc=f"train {name}", disable=not progress):
            x, labels, captions = _images(batch, seed, step)
            x0 = x / 127.5 - 1
            t = torch.randint(0, 1000, (batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            pred = d(noise_sched.add_noise(x0, noise, t), t, labels, captions, gen)
            # Min-SNR-5 weighting (Hang et al. 2023): eps-prediction's low-noise steps are down-weighted,
            # so the few minutes of training go to the steps that form shapes; ~3x faster convergence.
            snr = compute_snr(noise_sched, t)
            weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
            loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(d.model.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            ema.step(d.model.parameters())
            log.append(loss.item())
    d.model.eval()
    d.save(out_dir, ema)
    return log


def _train_classifier(name, out_dir, *, steps, batch, lr, seed, progress):
    from safetensors.torch import save_file

    from metrics.shapes_classifier import ShapesClassifier, targets
    from models.base import seeded

    with seeded(seed):
        net = ShapesClassifier()
    net.train()
    opt, lr_sched = _optimizer(net.parameters(), lr, steps)
    gen, log = torch.Generator().manual_seed(seed), []
    for step in tqdm(range(steps), desc=f"train {name}", disable=not progress):
        x, _, captions = _images(batch, seed, step)
        # Light pixel noise: generated samples are slightly noisier than the renders.
        x = (x + torch.randn(x.shape, generator=gen) * 8 * torch.rand(batch, 1, 1, 1, generator=gen)).clamp(0, 255)
        logits, want = net.classify(x), targets(captions)
        loss = sum(F.cross_entropy(logits[k], want[k]) for k in want)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        log.append(loss.item())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(net.eval().state_dict(), str(out_dir / "model.safetensors"))
    return log
