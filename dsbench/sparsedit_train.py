"""Fine-tuning a SparseDiT converted from a DiT (models/sparsedit.py), by SparseDiT's recipe by default:
AdamW at a constant 1e-4, weight decay 0, no warm-up, an EMA of the weights (decay 0.9999) which is what
gets saved, DiT's loss (dsbench/diffusion_loss.py: ε-MSE, plus the variational bound on a learned σ), 10 %
label dropout to the null class (what classifier-free guidance needs), DDPM's linear β schedule.

A batch shares one sparse grid g, so its timesteps come from one interval of the piecewise-constant
temporal density (models/sparsedit_density.py `TemporalDensity.sample`; each row's t is still uniform).

Data: pre-extracted latents (dsbench/latents.py, a latent-space DiT on a GPU), or, for a pixel-space DiT
(the CPU proxy), the procedural shapes (dsbench/shapes.py), sample i a function of (seed, i).

Deterministic from the seed on a given device and thread count: batch `step` is a function of (seed,
step), and every draw (t, noise, label dropout) comes from one seeded generator. A checkpoint every
`checkpoint_every` steps, in `<out>.ckpt/` beside the output (so a workflow's removal of an incomplete
output keeps it), holds the raw weights, the EMA, the optimiser, the generators' states and the step: a run
killed at any point resumes from it to the same bits as a run never stopped. Checkpoints are read with
torch.load(weights_only=True) (nothing is unpickled) and refused unless they are this run's.

Output `<out>/`: transformer/ (the EMA weights, diffusers safetensors), loss.csv, and provenance.json,
written last (its presence marks a finished fine-tune), with the weights' SHA-256, the settings, the
source DiT's weight hashes and the command that reproduces it. The folder is assembled beside `<out>` and
moved into place whole; a finished output is only replaced when asked (`force`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from dsbench.io import atomic_path, write_json, write_text
from methods.settings import SettingsError
from methods.sparsedit import FinetuneSettings
from models.proxy import PROVENANCE, weight_hashes

CKPT_FORMAT = "dsbench.sparsedit_finetune/1"


def variant_settings(entry: dict, where: str, strict: bool = True) -> tuple[dict, FinetuneSettings]:
    """(convert_dit's plan, FinetuneSettings) of a sparsedit variant, validated by the method itself (every
    key, nested ones too: the same errors as when the variant samples); errors name `where`."""
    from methods import make_method

    if not isinstance(entry, dict) or entry.get("method") != "sparsedit":
        got = entry.get("method") if isinstance(entry, dict) else entry
        raise SettingsError(f"{where}.method", f"must be sparsedit to fine-tune a SparseDiT, got {got!r}")
    try:
        method = make_method("sparsedit", **{k: v for k, v in entry.items() if k != "method"})
    except ValueError as e:  # the method names its keys `sparsedit.<key>`: name them as the caller's
        text = str(e)
        raise ValueError(where + text[len("sparsedit"):] if text.startswith("sparsedit") else f"{where}: {text}") from None
    plan = {**method.layers.model_kwargs(), "pruning_rates": [float(r) for r in method.config.pruning_rates],
            "sparse_grid": method.config.fixed_grid}
    return plan, FinetuneSettings(**(method.config.finetune or {}))


# ---- source DiT and data --------------------------------------------------------------------------------

def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's tensors (names, shapes, dtypes, bytes): the identity of weights with no file."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_source(model: str, source: str, weights: str | None = None, seed: int = 0):
    """(the preset's DiT transformer, its provenance): the committed proxy (hash-checked), real weights
    (a local folder or the hub cache, never downloaded) or seeded tiny weights."""
    from diffusers import DiTTransformer2DModel

    from models.registry import get_preset

    preset = get_preset(model)
    if preset.family != "dit":
        raise ValueError(f"SparseDiT is converted from a DiT; {model} is a {preset.family} model")
    if source == "proxy":
        from models.proxy import proxy_dir, verified

        folder = proxy_dir(preset.proxy, weights)
        hashes = verified(folder)["sha256"]
        dit = DiTTransformer2DModel.from_pretrained(folder / "transformer")
    elif source == "real":
        from models.weights import resolve

        folder = resolve(weights or preset.hub_id)
        dit = DiTTransformer2DModel.from_pretrained(folder / "transformer")
        hashes = weight_hashes(folder / "transformer")
    elif source == "tiny":
        from models.base import seeded

        folder = None
        with seeded(seed):
            dit = DiTTransformer2DModel(**preset.transformer)
        hashes = {"state_dict": state_digest(dit)}
    else:
        raise ValueError(f"fine-tuning starts from proxy, real or tiny weights, not source {source!r}")
    return dit, {"model": model, "source": source, "folder": _shown(folder), "sha256": hashes}


def _shown(folder: Path | None) -> str | None:
    """A folder as provenance shows it: relative to the repository when inside it (committed weights)."""
    from dsbench.config import REPO

    if folder is None:
        return None
    folder = Path(folder).resolve()
    return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)


class ShapesData:
    """The procedural shapes as pixel-space 'latents' in [-1, 1]: batch `step` = samples step·batch …"""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed

    def identity(self) -> dict:
        return {"kind": "shapes", "size": self.size, "seed": self.seed}

    def batch(self, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        from dsbench.shapes import make_shapes

        images, labels, _ = make_shapes(batch, seed=self.seed, size=self.size, start=step * batch)
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(labels).long()


def make_data(dit, settings: FinetuneSettings):
    cfg = dit.config
    if settings.latents:
        from dsbench.latents import LatentFolder

        return LatentFolder(settings.latents, cfg.in_channels, cfg.sample_size, cfg.num_embeds_ada_norm,
                            settings.seed)
    if cfg.in_channels != 3:
        raise ValueError(f"a latent-space DiT ({cfg.in_channels} channels) fine-tunes on pre-extracted latents: "
                         f"set finetune.latents to their folder (dsbench/latents.py has the format)")
    return ShapesData(cfg.sample_size, settings.seed)


# ---- checkpoints --------------------------------------------------------------------------------------

def checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    """This run's checkpoint, or a one-line ValueError saying why not and what to do."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"refusing checkpoint {path}: not a readable plain-tensor checkpoint ({first}); "
                         f"delete {path.parent} to start over") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise ValueError(f"refusing checkpoint {path}: not a SparseDiT fine-tuning checkpoint ({CKPT_FORMAT}); "
                         f"delete {path.parent} to start over")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"refusing checkpoint {path}: it belongs to another fine-tune (its plan, settings, source "
                         f"weights or data differ from this one's); delete {path.parent} to start over")
    return state


def _fingerprint(plan: dict, settings: FinetuneSettings, source: dict, data: dict) -> str:
    """What the weights at a given step depend on. Not `steps` (a run may be extended: the learning rate
    is constant), `checkpoint_every` or `device` (where it runs, recorded in the provenance)."""
    from dsbench.config import digest

    s = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("steps", "checkpoint_every", "device")}
    return digest({"plan": plan, "settings": s, "source": source["sha256"], "data": data})


# ---- the fine-tune ------------------------------------------------------------------------------------

def _label_embedders(model):
    from diffusers.models.embeddings import LabelEmbedding

    return [m for m in model.modules() if isinstance(m, LabelEmbedding)]


class _Run:
    """What a checkpoint holds and a resume restores: the raw weights, the optimiser, the EMA, the
    generators' states (the seeded one every draw comes from, and torch's global one for anything else),
    the step, the loss log and the time spent."""

    def __init__(self, model, settings: FinetuneSettings, device, fingerprint: str, ckpt_dir: Path):
        from diffusers.training_utils import EMAModel

        self.model, self.device, self.fingerprint, self.dir = model, device, fingerprint, ckpt_dir
        self.opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
        self.ema = EMAModel(model.parameters(), decay=settings.ema)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.step, self.log, self.seconds, self.resumed = 0, [], 0.0, []
        self.started = time.time()

    @property
    def path(self) -> Path:
        return self.dir / "last.pt"

    def resume(self, steps: int) -> None:
        if not self.path.exists():
            return
        state = load_checkpoint(self.path, self.fingerprint)
        if state["step"] > steps:
            raise ValueError(f"checkpoint {self.path} is at step {state['step']}, beyond the {steps} steps asked "
                             f"for; ask for more steps, or delete {self.dir} to start over")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)  # its shadow weights load where the checkpoint was read: the CPU
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["global_rng"])
        self.step, self.seconds = state["step"], state["seconds"]
        self.log = [dict(zip(LOG_COLUMNS, r)) for r in state["log"].tolist()]
        self.resumed = state["resumed"].tolist() + [self.step]

    def elapsed(self) -> float:
        return self.seconds + time.time() - self.started

    def save(self) -> None:
        rows = torch.tensor([[r[k] for k in LOG_COLUMNS] for r in self.log], dtype=torch.float64)
        with atomic_path(self.path) as tmp:
            torch.save({"format": CKPT_FORMAT, "fingerprint": self.fingerprint, "step": self.step,
                        "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                        "ema": self.ema.state_dict(), "generator": self.gen.get_state(),
                        "global_rng": torch.get_rng_state(), "seconds": self.elapsed(),
                        "log": rows.reshape(-1, len(LOG_COLUMNS)),
                        "resumed": torch.tensor(self.resumed, dtype=torch.int64)}, tmp)
        write_text(self.dir / "loss.csv", _csv(self.log))  # to follow a long run


def finetune(dit, out: str | Path, *, plan: dict, settings: FinetuneSettings, source: dict, device: str = "cpu",
             command: str = "", force: bool = False, progress: bool = True,
             on_checkpoint: Callable[[int], Any] | None = None) -> dict:
    """Convert `dit` with `plan`, fine-tune it by `settings` into `out` and return its provenance.
    `on_checkpoint(step)` runs after each checkpoint is written."""
    import diffusers
    from diffusers import DDPMScheduler

    from dsbench.diffusion_loss import PosteriorTerms, diffusion_loss
    from models.sparsedit import SparseDiTTransformer2DModel
    from models.sparsedit_density import TemporalDensity

    out = Path(out)
    if (out / PROVENANCE).exists() and not force:
        raise FileExistsError(f"{out} already holds a finished fine-tune; pass --force to train over it")
    data = make_data(dit, settings)
    model = SparseDiTTransformer2DModel.from_dit(dit.float().eval(), **plan).to(device).train()
    # diffusers gives every DiT block its own label embedder, each dropping labels on its own draw in train
    # mode; DiT drops a sample's label once for all blocks. So labels are dropped here, once per sample.
    for emb in _label_embedders(model):
        emb.dropout_prob = 0.0
    null_class, grid_hw = model.config.num_embeds_ada_norm, (model.config.sample_size // model.patch_size,) * 2
    fixed = model.density.fixed_grid is not None
    density = None if fixed else TemporalDensity(*model.config.pruning_rates, intervals=settings.intervals,
                                                 num_timesteps=model.config.num_train_timesteps)
    sched = DDPMScheduler(num_train_timesteps=model.config.num_train_timesteps)  # linear β 1e-4 .. 0.02, DiT's
    terms = PosteriorTerms(sched.betas)
    run = _Run(model, settings, device, _fingerprint(plan, settings, source, data.identity()), checkpoint_dir(out))
    run.resume(settings.steps)

    bar = tqdm(total=settings.steps, initial=run.step, desc="finetune sparsedit", disable=not progress)
    while run.step < settings.steps:
        x0, labels = data.batch(run.step, settings.batch)
        gen, n = run.gen, settings.batch
        t = (torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen) if fixed
             else density.sample(n, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        labels = torch.where(torch.rand(n, generator=gen) < settings.label_dropout, null_class, labels)
        g = model.density.fixed_grid if fixed else density.grid(int(t[0]), grid_hw)  # the interval's g
        x0, t, noise, labels = (v.to(device) for v in (x0, t, noise, labels))
        xt = sched.add_noise(x0, noise, t)
        pred = model(xt, timestep=t, class_labels=labels, sparse_grid=g).sample
        parts = diffusion_loss(pred, x0, xt, t, noise, terms)
        loss = parts["loss"].mean()
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.ema.step(model.parameters())
        run.step += 1
        run.log.append({"step": run.step, "loss": loss.item(), "mse": parts["mse"].mean().item(),
                        "vb": parts["vb"].mean().item(), "grid": float(g or 0)})
        bar.update(1)
        bar.set_postfix(loss=f"{run.log[-1]['loss']:.4f}", g=g)
        if run.step % settings.checkpoint_every == 0 or run.step == settings.steps:
            run.save()
            if on_checkpoint is not None:
                on_checkpoint(run.step)
    bar.close()

    model.eval()
    for emb in _label_embedders(model):
        emb.dropout_prob = 0.1  # as constructed (not saved: the null-class row is what sampling needs)
    run.ema.copy_to(model.parameters())
    learned_sigma = model.out_channels == 2 * model.config.in_channels
    info = {"model": source["model"], "plan": plan, "settings": dataclasses.asdict(settings),
            "loss": "eps_mse+vb" if learned_sigma else "eps_mse (the model has no learned variance)",
            "density_intervals": None if fixed else [
                {"t": list(density.bounds(k)), "grid": density.grid(density.bounds(k)[0], grid_hw)}
                for k in range(settings.intervals)],
            "source": source, "data": data.identity(), "steps_done": run.step, "resumed_at": run.resumed,
            "final_loss_mean_last_50": sum(r["loss"] for r in run.log[-50:]) / len(run.log[-50:]),
            "train_seconds": round(run.elapsed(), 1), "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "command": command}
    _publish(out, model, run.log, info)
    shutil.rmtree(run.dir, ignore_errors=True)
    return info


LOG_COLUMNS = ("step", "loss", "mse", "vb", "grid")


def _csv(log: list[dict]) -> str:
    return ",".join(LOG_COLUMNS) + "\n" + "".join(
        f"{int(r['step'])},{r['loss']:.6f},{r['mse']:.6f},{r['vb']:.6f},{int(r['grid'])}\n" for r in log)


def _publish(out: Path, model, log: list[dict], info: dict) -> None:
    """Assemble the output beside `out`, provenance last, then move it into place whole."""
    stage = out.with_name(f".{out.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(stage / "transformer", safe_serialization=True)
    write_text(stage / "loss.csv", _csv(log))
    info["sha256"] = weight_hashes(stage)
    write_json(stage / PROVENANCE, info)
    if out.exists():
        shutil.rmtree(out)  # unfinished, or finished and replaced on request (checked at the start)
    stage.rename(out)


# ---- the CLI's entry ---------------------------------------------------------------------------------

def finetune_variant(cfg: dict, model: str, out: str | Path, *, method: str | None = None,
                     inline: dict | None = None, force: bool = False, command: str = "", progress: bool = True):
    """`dsbench finetune-sparsedit`: the variant `method` of the config (or an `inline` variant) on `model`.
    The source DiT is the model's config entry (source, weights), or, for a model the config does not run,
    the preset's own: its committed proxy, tiny seeded weights or the hub id."""
    from models.registry import get_preset

    if inline is not None:
        plan, settings = variant_settings(inline, "settings", strict=True)
    else:
        if method not in cfg["methods"]:
            raise ValueError(f"unknown method variant {method!r} (defined: {', '.join(sorted(cfg['methods']))})")
        plan, settings = variant_settings(cfg["methods"][method], f"methods.{method}")
    entry = cfg["models"].get(model)
    preset = get_preset(model)
    if entry is not None:
        source, weights = entry["source"], entry.get("weights")
    else:
        source, weights = ("proxy" if preset.proxy else "tiny" if preset.is_tiny else "real"), None
    dit, src = load_source(model, source, weights, seed=cfg.get("seed", 0) if entry is not None else 0)
    device = settings.device or (cfg["device"] if source == "real" else "cpu")
    return finetune(dit, out, plan=plan, settings=settings, source={**src, "variant": method or "inline"},
                    device=device, command=command, force=force, progress=progress)


def inline_variant(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--settings is a JSON object (a sparsedit variant), not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--settings is a JSON object (a sparsedit variant), got {value!r}")
    return value
