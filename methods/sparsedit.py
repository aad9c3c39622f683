"""`sparsedit`: SparseDiT (Chang et al., NeurIPS 2025) as a method row.

Unlike the caching methods it does not change which sub-layers run: it replaces DiT's transformer with a
SparseDiT (models/sparsedit.py), whose middle layers run on a g×g grid of pooled tokens, g following the
timestep. The cell swaps `pipe.transformer` for `denoiser()`'s network and then runs the usual
compute-everything plan over its blocks, so sampling, MACs and latency take the same path as every row.

Weights: `weights` names a folder with a fine-tuned SparseDiT (diffusers `transformer/` and a
provenance.json recording the SHA-256 of its safetensors); without it the DiT's own weights are
converted (`convert_dit`) and used as they are: the zero-shot ablation, which the paper never reports
(the SDTMs' new merge layers and pooled attention are not DiT's function until fine-tuned).

The grid of each denoiser call is set from the scheduler's host-side timesteps (a forward pre-hook that
passes `sparse_grid`), not read from the `timestep` tensor: that works on the meta device (MAC counting)
and spares a device-to-host sync per call on a GPU.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from methods.base import Method
from methods.settings import invalid

PROVENANCE = "provenance.json"


def weights_folder(weights: str) -> Path:
    """A variant's `weights` folder: as given, or the committed one inside this repository (e.g.
    models/proxies/proxy_dit_sparsedit, found from a workflow run in another directory)."""
    from methods.paths import committed_path

    return committed_path(weights)


def training_command(model: str, variant: str) -> str:
    """The workflow target that fine-tunes a variant's weights."""
    return f"snakemake --cores 2 results/sparsedit/{model}/{variant}"


@dataclass(frozen=True)
class LayerPlan:
    """SparseDiT's blocks, bottom to top, which must sum to the DiT's depth (DiT-XL/2: 2 + 4 × 6 + 2 = 28):
    poolingformers: uniform-attention blocks (>= 0); sdtms: sparse-dense token modules (>= 0); sdtm_layout:
    [generation, sparse, recovery, dense] blocks of each SDTM (generation and recovery exactly 1);
    top_blocks: ordinary DiT blocks before the final layer (>= 0)."""
    poolingformers: int = 2
    sdtms: int = 4
    sdtm_layout: list | tuple = (1, 3, 1, 1)
    top_blocks: int = 2

    def __post_init__(self):
        for key in ("poolingformers", "sdtms", "top_blocks"):
            n = getattr(self, key)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise invalid("sparsedit", key, f"must be an integer >= 0, got {n!r}")
        lay = self.sdtm_layout
        if not (isinstance(lay, (list, tuple)) and len(lay) == 4
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lay)):
            raise invalid("sparsedit", "sdtm_layout", f"must be 4 block counts [generation, sparse, recovery, "
                                                      f"dense], got {lay!r}")
        if lay[0] != 1 or lay[2] != 1:
            raise invalid("sparsedit", "sdtm_layout", f"needs exactly one generation and one recovery block, "
                                                      f"got {list(lay)}")

    @property
    def blocks(self) -> int:
        return self.poolingformers + self.sdtms * sum(self.sdtm_layout) + self.top_blocks

    def describe(self) -> str:
        return (f"{self.blocks} blocks ({self.poolingformers} Poolingformers + {self.sdtms} SDTMs × "
                f"{sum(self.sdtm_layout)} + {self.top_blocks} top)")

    def model_kwargs(self) -> dict:
        return dict(num_poolingformers=self.poolingformers, num_sdtms=self.sdtms,
                    sdtm_layout=list(self.sdtm_layout), num_top_blocks=self.top_blocks)


@dataclass(frozen=True)
class FinetuneSettings:
    """A sparsedit variant's `finetune:` block (dsbench/sparsedit_train.py fine-tunes with it). steps: optimiser steps (the paper: ~400K for DiT-XL);
    batch: samples per step, all on one sparse grid (the paper: 256); lr: AdamW's constant learning rate;
    ema: the EMA decay (diffusers' EMAModel, whose decay ramps as (1+s)/(10+s) up to this value);
    checkpoint_every: steps between resumable checkpoints; seed: of the data order, t, noise and label
    dropout; intervals: K, the piecewise-constant density's intervals in training (a multiple of 4 keeps
    t < T/4 at r_min); label_dropout: share of labels replaced by the null class; latents: folder of
    pre-extracted latents (dsbench/latents.py), needed for a latent-space DiT (a pixel-space proxy trains
    on the shapes); device: where it trains (None: the config's `device` for real weights, else cpu)."""
    steps: int = 400_000
    batch: int = 256
    lr: float = 1e-4
    ema: float = 0.9999
    checkpoint_every: int = 1000
    seed: int = 0
    intervals: int = 12
    label_dropout: float = 0.1
    latents: str | None = None
    device: str | None = None

    def __post_init__(self):
        for key in ("steps", "batch", "checkpoint_every", "intervals"):
            if getattr(self, key) < 1:
                raise invalid("finetune", key, f"must be >= 1, got {getattr(self, key)}")
        if self.seed < 0:
            raise invalid("finetune", "seed", f"must be >= 0, got {self.seed}")
        if not self.lr > 0:
            raise invalid("finetune", "lr", f"must be > 0, got {self.lr}")
        for key in ("ema", "label_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise invalid("finetune", key, f"must be in [0, 1), got {getattr(self, key)}")


class SparseDiT(Method):
    name = "sparsedit"
    replaces_denoiser = True
    denoiser_families = ("dit",)  # SparseDiT is defined on class-conditional DiT (convert_dit refuses others)

    @dataclass(frozen=True)
    class Config:
        """weights: folder of a fine-tuned SparseDiT (`transformer/` saved by diffusers' save_pretrained, and
        provenance.json with the SHA-256 of its safetensors), relative to the working directory; empty or
        null: zero-shot, the DiT's weights converted without fine-tuning (an ablation); pruning_rates:
        [r_min, r_max], 0 <= r_min <= r_max < 1, the pruning rate near the data and at pure noise (the
        paper's [0.61, 0.86] at 256 px: grids 10×10 -> 6×6 of 16×16 tokens); fixed_grid: one g×g sparse grid
        at every step instead (>= 1, at most the token grid's side); layers: the layer plan (LayerPlan);
        finetune: how `dsbench finetune-sparsedit` makes the weights (FinetuneSettings; sampling ignores it)."""
        weights: str | None = None
        pruning_rates: list | tuple = (0.61, 0.86)
        fixed_grid: int | None = None
        layers: dict = field(default_factory=dict, metadata={"settings": LayerPlan})
        finetune: dict | None = field(default=None, metadata={"settings": FinetuneSettings})

        def __post_init__(self):
            r = self.pruning_rates
            numbers = isinstance(r, (list, tuple)) and len(r) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
            if not numbers or not 0 <= r[0] <= r[1] < 1:
                raise invalid("sparsedit", "pruning_rates", f"must be [r_min, r_max] with 0 <= r_min <= r_max < 1, "
                                                            f"got {r!r}")
            g = self.fixed_grid
            if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
                raise invalid("sparsedit", "fixed_grid", f"must be an integer >= 1 or null, got {g!r}")

    @property
    def layers(self) -> LayerPlan:
        return LayerPlan(**self.config.layers)

    @property
    def folder(self) -> Path | None:
        return weights_folder(self.config.weights) if self.config.weights else None

    def density_kwargs(self) -> dict:
        return dict(pruning_rates=[float(v) for v in self.config.pruning_rates], sparse_grid=self.config.fixed_grid,
                    density_intervals=None)  # inference: the continuous schedule (intervals are for training)

    # ---- readiness and identity ---------------------------------------------------------------------
    def check_depth(self, model: str, depth: int) -> None:
        if self.layers.blocks != depth:
            raise ValueError(f"sparsedit's layer plan has {self.layers.describe()} but {model} has {depth} blocks; "
                             f"set `layers` to sum to {depth}")

    def check_ready(self, model: str, variant: str) -> dict | None:
        """The weights' provenance after checking every recorded SHA-256 (None: zero-shot). A missing folder
        is an error naming the command that fine-tunes it."""
        from models.proxy import verified

        folder = self.folder
        if folder is None:
            return None
        if not (folder / PROVENANCE).is_file():
            raise FileNotFoundError(f"methods.{variant}.weights: {folder} holds no fine-tuned SparseDiT "
                                    f"({PROVENANCE} missing); make it with `{training_command(model, variant)}`")
        info = verified(folder)
        if not any(k.startswith("transformer/") for k in info.get("sha256", {})):
            raise ValueError(f"{folder / PROVENANCE} records no transformer/*.safetensors digest")
        return info

    def denoiser_identity(self) -> dict:
        """Weights (the recorded SHA-256s, "zero-shot", or None while the folder is missing: a shard cannot be
        made then, and MACs do not depend on weights) and the density and layer settings, defaults resolved."""
        weights: object = "zero-shot"
        if self.folder is not None:
            prov = self.folder / PROVENANCE
            weights = json.loads(prov.read_text()).get("sha256") if prov.is_file() else None
        return {"weights_sha256": weights, **self.density_kwargs(), "layers": {**asdict(self.layers),
                                                                     "sdtm_layout": list(self.layers.sdtm_layout)}}

    # ---- the network ----------------------------------------------------------------------------------
    def denoiser(self, pipe, adapter):
        from models.sparsedit import SparseDiTTransformer2DModel

        dit = pipe.transformer
        self.check_depth(adapter.preset.name, dit.config.num_layers)
        plan = {**self.layers.model_kwargs(), **self.density_kwargs(),
                "num_train_timesteps": pipe.scheduler.config.num_train_timesteps}
        if dit.device.type == "meta":  # full size, no weights: MAC counting
            arch = {k: v for k, v in dit.config.items() if not k.startswith("_")}
            with torch.device("meta"):
                model = SparseDiTTransformer2DModel(**arch, **plan)
            model.to("meta")  # buffers made outside the device context (the positional table)
        elif self.folder is not None:
            model = self._load(dit, plan)
        else:
            model = SparseDiTTransformer2DModel.from_dit(dit, **plan)
        model.eval().requires_grad_(False)
        model.register_forward_pre_hook(ScheduleGrid(pipe, model), with_kwargs=True)
        return model

    def _load(self, dit, plan: dict):
        from models.sparsedit import SparseDiTTransformer2DModel

        folder = self.folder / "transformer"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no fine-tuned SparseDiT transformer there")
        keep = ("num_poolingformers", "num_sdtms", "sdtm_layout", "num_top_blocks")
        saved = SparseDiTTransformer2DModel.load_config(folder)
        want = {**{k: v for k, v in dit.config.items() if not k.startswith("_")}, **{k: plan[k] for k in keep}}
        differ = [f"{k} {saved.get(k)!r} (asked {v!r})" for k, v in want.items()
                  if k != "num_train_timesteps" and _plain(saved.get(k)) != _plain(v)]
        if differ:
            raise ValueError(f"{folder} is a SparseDiT of another architecture or layer plan than this model and "
                             f"variant: {'; '.join(differ)}")
        # The variant's density replaces the one saved from training (a piecewise schedule there).
        model = SparseDiTTransformer2DModel.from_pretrained(folder, torch_dtype=dit.dtype,
                                                            **{k: plan[k] for k in plan if k not in keep})
        return model.to(device=dit.device)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class ScheduleGrid:
    """Forward pre-hook of a SparseDiT in a pipeline: each call's `sparse_grid` from the timestep the
    scheduler is at, read on the host (the i-th call since the scheduler's timesteps were last set uses
    its i-th timestep: DiT's pipeline calls the transformer once per step, CFG rows batched). Where the
    timestep tensor is on the CPU it is checked against that value, so a call from elsewhere cannot be
    given another step's grid silently."""

    def __init__(self, pipe, model):
        self.pipe, self.model = pipe, model
        self._timesteps, self._calls = None, 0

    def __call__(self, module, args, kwargs):
        if kwargs.get("sparse_grid") is not None:
            return None  # a caller's explicit grid wins
        steps = self.pipe.scheduler.timesteps
        if steps is not self._timesteps:
            self._timesteps, self._calls = steps, 0
        if self._calls >= len(steps):
            raise RuntimeError(f"SparseDiT called {self._calls + 1} times for {len(steps)} scheduler timesteps; "
                               "set the scheduler's timesteps before each sampling run")
        t = float(steps[self._calls])
        self._calls += 1
        passed = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(passed, torch.Tensor) and passed.device.type == "cpu" and not bool((passed == t).all()):
            raise RuntimeError(f"SparseDiT was called with timestep {passed.tolist()} where the scheduler is at {t}")
        x = kwargs.get("hidden_states", args[0] if args else None)
        p = self.model.patch_size
        return args, {**kwargs, "sparse_grid": self.model.density.grid(t, (x.shape[-2] // p, x.shape[-1] // p))}
