"""The adapter contract every model family implements.

An adapter knows one diffusers model family: how to build its pipeline (real weights, tiny seeded
weights, or full size on the meta device), where its blocks and sub-layers are, the token grid of the
image stream, and how to sample a batch of conditions with one generator per sample.
Methods and metrics only talk to this contract, so a new family (FLUX's dual-stream blocks, Wan's
3-D tokens) adds an adapter and nothing else.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from methods.calls import gather
from models import weights as weights_mod
from models.registry import ModelPreset

SOURCES = ("real", "tiny", "proxy", "meta", "random")


# Wan's own scheduler config (Wan2.1-T2V-1.3B-Diffusers/scheduler): UniPC on flow-matching sigmas, shift 3 (480p).
# FLUX.1-schnell's (its repo's scheduler_config.json): flow-matching Euler, shift 1, no dynamic shifting.
_SCHEDULER_KWARGS = {"unipc_flow": dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
                     "flow_euler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False,
                                        base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                        max_image_seq_len=4096)}
# Settings a sampler must have whatever the weights' repo says, because the official code samples that way.
# "ddim" is DiT's DDIM (guided-diffusion's respaced "ddim{S}", eta 0): timesteps 1000/S·(S−1) … 0 (leading
# spacing, no offset), the last step to alpha_bar = 1, and no clipping of the predicted x0 (DiT samples with
# clip_denoised=False). The DiT hub repo ships a DDPMScheduler config with clip_sample=True (diffusers'
# conversion script uses DDPM's defaults), which DDIMScheduler.from_config would otherwise inherit.
SAMPLER_SETTINGS = {"ddim": dict(clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)}


def scheduler_class(name: str):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    table = {"dpm_solver_pp": DPMSolverMultistepScheduler, "ddim": DDIMScheduler,
             "unipc_flow": UniPCMultistepScheduler, "flow_euler": FlowMatchEulerDiscreteScheduler}
    if name not in table:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(table)}")
    return table[name]


def new_scheduler(name: str, host: bool = False, reference: bool = True):
    """A fresh scheduler of that name with the model family's settings (`host`: for the meta device;
    `reference`: impose SAMPLER_SETTINGS; the pixel-space DiT proxy keeps diffusers' DDIM defaults, which
    clip x0 to the image range, as it was sampled and evaluated with them)."""
    cls = scheduler_class(name)
    extra = SAMPLER_SETTINGS.get(name, {}) if reference else {}
    return (host_timesteps(cls) if host else cls)(**_SCHEDULER_KWARGS.get(name, {}), **extra)


def scheduler_from_config(name: str, config):
    """The sampler `name` on a weights repo's scheduler config (its betas), with SAMPLER_SETTINGS imposed."""
    return scheduler_class(name).from_config(config, **SAMPLER_SETTINGS.get(name, {}))


def step_clock(scheduler) -> str:
    """Which way the official code's step index counts under this sampler: "down" (S − 1 … 0) for DDIM and
    DDPM, whose reference loops (DiT's, from guided-diffusion) iterate the timestep indices in reverse;
    "up" (0 … S − 1) for the solvers whose reference loops count calls from the first (PixArt's
    DPM-Solver, the flow-matching samplers of Wan and FLUX)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    return "down" if isinstance(scheduler, (DDIMScheduler, DDPMScheduler)) else "up"


def host_timesteps(cls):
    """Scheduler subclass that keeps its timesteps on the host whatever device the pipeline asks for.

    On the meta device the pipelines would put timesteps on meta, and the scheduler's table lookups
    (alphas_cumprod[t]) need real values; the latents stay on meta either way.
    """
    @functools.wraps(cls.set_timesteps)  # pipelines inspect its signature (FLUX: does it take `sigmas`)
    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        return cls.set_timesteps(self, num_inference_steps, device=None, **kwargs)

    return type(f"Host{cls.__name__}", (cls,), {"set_timesteps": set_timesteps})


def timestep_to_meta(module, args, kwargs):
    """A forward pre-hook for the meta device: the scheduler keeps its timesteps on the host
    (host_timesteps), the pipeline hands them to the denoiser as they are; move them to meta."""
    return args, {**kwargs, "timestep": kwargs["timestep"].to("meta")}


@contextlib.contextmanager
def seeded(seed: int):
    """Module construction inside draws its random weights from `seed`, leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


KINDS = ("self_attn", "cross_attn", "mlp")


@dataclass(frozen=True)
class Sublayer:
    """One hookable sub-layer of a block: a child module whose output is cached (pre-gate: the block
    applies the current step's gate to whatever it returns).

    `streams[i]` is the token stream (e.g. "image", "text", or "joint" for FLUX's concatenated
    [text; image] sequence) whose tokens the call argument `args[i]` holds, and whose output the return
    slot i holds (one stream: a tensor; several: a tuple). `aligned`: further arguments with one row per
    token of the stream (FLUX's single-stream MLP branch takes the attention output of the same tokens),
    gathered with it. `full_modules`: child layers that see every token even when queries are a subset
    (the key/value projections); `stream_modules`: which child layers work on which stream, where there
    are several (the rest work on streams[0]); `owns`: the block's child layers this sub-layer's work is
    counted under, where they are not below its own module (FLUX's single-stream MLP branch runs the
    block's proj_mlp and proj_out); MAC prediction reads these three."""
    name: str
    kind: str                                            # one of KINDS
    streams: tuple[str, ...] = ("image",)
    args: tuple[str, ...] = ("hidden_states",)
    aligned: tuple[str, ...] = ()
    full_modules: tuple[str, ...] = ("to_k", "to_v")
    stream_modules: tuple[tuple[str, str], ...] = ()     # (child layer name, stream)
    owns: tuple[str, ...] = ()                           # default: (name,)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sub-layer {self.name!r}: unknown kind {self.kind!r}; one of {KINDS}")
        if len(self.streams) != len(self.args):
            raise ValueError(f"sub-layer {self.name!r}: {len(self.streams)} streams but {len(self.args)} args")
        if len(self.streams) > 1 and self.kind == "mlp":
            raise ValueError(f"sub-layer {self.name!r}: a token-wise sub-layer works on one stream")


@dataclass(frozen=True)
class BlockGroup:
    """A list of blocks of one kind, as cache-dit's block adapters and diffusers' block metadata
    describe them: the denoiser attribute holding them, their sub-layers, and the block call's I/O
    pattern (`args[i]` carries stream `streams[i]`; return slot j carries `returns[j]`; one slot: a
    tensor). The engine reads nothing else of a model's blocks."""
    name: str
    sublayers: tuple[Sublayer, ...]
    streams: tuple[str, ...] = ("image",)
    args: tuple[str, ...] = ("hidden_states",)
    returns: tuple[str, ...] = ("image",)

    def __post_init__(self):
        if len(self.streams) != len(self.args) or set(self.returns) != set(self.streams):
            raise ValueError(f"block group {self.name!r}: streams {self.streams}, args {self.args} and returns "
                             f"{self.returns} do not describe the same streams")

    @property
    def sublayer_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sublayers)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.sublayers)


def one_group(name: str, *sublayers: tuple[str, str]) -> tuple[BlockGroup, ...]:
    """The usual description: one group of image-stream blocks with (sub-layer name, kind) pairs."""
    return (BlockGroup(name, tuple(Sublayer(n, k) for n, k in sublayers)),)


class ModelAdapter:
    family: ClassVar[str]
    latent_format: ClassVar[str] = "BCHW"  # the denoiser's latent layout, as diffusers' FasterCache names it
    # The model's block groups, in execution order (see BlockGroup).
    groups: ClassVar[tuple[BlockGroup, ...]]

    def __init__(self, preset: ModelPreset):
        self.preset = preset

    # ---- building -------------------------------------------------------------------------------
    def build(self, source: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              scheduler: str, weights: str | None = None, seed: int = 0, guided_channels: int | None = None):
        """The pipeline, eval mode, no gradients. `guided_channels`: classifier-free guidance on the first N
        latent channels only (a family that supports it says so; None: every channel, diffusers' way)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; one of {SOURCES}")
        if source == "real" and self.preset.is_tiny:
            raise ValueError(f"{self.preset.name} is a tiny model: it has no real weights; use source 'tiny'")
        if source == "tiny" and not self.preset.is_tiny:
            raise ValueError(f"{self.preset.name} is a full-size model: use source 'real' or 'meta'")
        if source == "proxy" and not self.preset.proxy:
            raise ValueError(f"{self.preset.name} is not a trained proxy; source 'proxy' is for "
                             f"{', '.join(n for n, p in _presets().items() if p.proxy)}")
        if source == "proxy":
            from models.proxy import proxy_dir, verified

            folder = proxy_dir(self.preset.proxy, weights)
            verified(folder)  # every weight file's SHA-256, before anything is loaded
            pipe = self._assemble(new_scheduler(scheduler, reference=False), text=True, folder=folder)
            if dtype != torch.float32:
                pipe.to(dtype=dtype)
        elif source == "real":
            pipe = self._load_real(weights or self.preset.hub_id, dtype)
            pipe.scheduler = scheduler_from_config(scheduler, pipe.scheduler.config)
        elif source == "random":  # full size, seeded random weights, no text encoder: latency and memory checks
            if self.preset.is_tiny:
                raise ValueError(f"{self.preset.name} is a tiny model: use source 'tiny'")
            with seeded(seed), torch.device(device):
                pipe = self._assemble(new_scheduler(scheduler), text=False)
            pipe.to(dtype=dtype)
        elif source == "meta":
            sched = new_scheduler(scheduler, host=True)  # built outside the meta context
            with torch.device("meta"):
                pipe = self._assemble(sched, text=False)
            pipe.transformer.to("meta")  # buffers created outside the device context
        else:
            with seeded(seed):
                pipe = self._assemble(new_scheduler(scheduler), text=True)
            if dtype != torch.float32:
                pipe.to(dtype=dtype)
        if source != "meta":
            pipe.to(device=device)
        # Decode one sample at a time: CPU convolutions are not batch-invariant, and a sample must not
        # depend on the batch it was drawn in.
        pipe.vae.enable_slicing()
        pipe.set_progress_bar_config(disable=True)
        for m in pipe.components.values():
            if isinstance(m, torch.nn.Module):
                m.eval().requires_grad_(False)
        if guided_channels is not None:
            self.guide_channels(pipe, guided_channels)
        return pipe

    def guide_channels(self, pipe, channels: int) -> None:
        raise ValueError(f"guided_channels is a DiT setting (the official sampler guides 3 of 4 latent channels); "
                         f"{self.family} guides every channel")

    def _assemble(self, scheduler, text: bool, folder=None):
        """Pipeline from the preset's configs: fresh weights (tiny, or on the meta device), or a trained
        proxy's from `folder`."""
        raise NotImplementedError

    def _vae(self):
        if self.preset.pixel_space:
            from models.pixel_vae import PixelSpaceVAE

            return PixelSpaceVAE(**self.preset.vae)
        from diffusers import AutoencoderKL

        return AutoencoderKL(**self.preset.vae)

    def _transformer(self, cls, folder):
        return cls.from_pretrained(folder / "transformer") if folder else cls(**self.preset.transformer)

    def _load_real(self, repo: str, dtype: torch.dtype):
        raise NotImplementedError

    def weight_repos(self) -> list[str]:
        """Repos (hub ids) whose presence real runs need; `dsbench doctor` checks them."""
        return [r for r in (self.preset.hub_id, self.preset.transformer_hub_id) if r]

    @staticmethod
    def _resolve(repo: str):
        return weights_mod.resolve(repo)

    # ---- structure ------------------------------------------------------------------------------
    def denoiser(self, pipe) -> torch.nn.Module:
        return pipe.transformer

    def group_blocks(self, pipe, group: BlockGroup) -> list[torch.nn.Module]:
        return list(getattr(self.denoiser(pipe), group.name))

    def blocks(self, pipe) -> list[torch.nn.Module]:
        """Every block of every group, in execution order."""
        return [b for g in self.groups for b in self.group_blocks(pipe, g)]

    def sublayer(self, block: torch.nn.Module, name: str) -> torch.nn.Module:
        return getattr(block, name)

    def layout(self, pipe):
        """What a method may know of this model: its groups (depth, the kind of each sub-layer) and its
        sampler's clock."""
        from methods.base import Group, Layout

        groups = [Group(g.name, len(self.group_blocks(pipe, g)), g.sublayer_names, g.kinds) for g in self.groups]
        if len(groups) == 1:  # the one-group layout keeps the name its plans and schedules were made with
            from methods.plan import SINGLE_GROUP

            groups = [Group(SINGLE_GROUP, groups[0].blocks, groups[0].sublayers, groups[0].kinds)]
        return Layout(groups=groups, clock=step_clock(pipe.scheduler))

    def stream_tokens(self) -> dict[str, int]:
        """Tokens per stream (MAC prediction): the image grid's, and for text-conditioned joint models
        the text and joint streams'."""
        h, w = self.token_grid()
        return {"image": h * w}

    def stream_grid(self, stream: str, grid: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """The (rows, cols) grid of a stream's image tokens, which are its last rows·cols tokens (a joint
        stream puts the text first); None for a stream without one (text). ToCa's spatial bonus uses it.
        `grid`: the image grid of the call at hand (library use), else the preset's."""
        return (grid or self.token_grid()) if stream in ("image", "joint") else None

    def grid_from_call(self, args: tuple, kwargs: dict) -> tuple[int, int]:
        """The image token grid of a denoiser call, from its latents (B, C, H, W) and the patch size: a
        pipeline used as a library may sample at any size."""
        x = kwargs.get("hidden_states", args[0] if args else None)
        p = self.preset.transformer["patch_size"]
        return x.shape[-2] // p, x.shape[-1] // p

    def prepare(self, pipe) -> None:
        """Install what the engine needs on a pipeline built elsewhere (library use): the family's
        attention processors and sub-layer boundaries. Pipelines this adapter builds already have them."""

    def cfg_halves(self, guidance_scale: float) -> int:
        """Rows per sample in a denoiser batch: PixArt and DiT batch the CFG branches together."""
        return 2 if guidance_scale > 1 else 1

    def denoiser_calls(self, guidance_scale: float) -> int:
        """Denoiser calls per sampling step: 1 where the CFG branches share one batch (the engine then keeps
        one cache per call of a step, i.e. per branch, where there are more)."""
        return 1

    def cfg_branches(self, guidance_scale: float) -> int:
        """CFG branches the denoiser runs per image and step (rows of a batch × calls)."""
        return self.cfg_halves(guidance_scale) * self.denoiser_calls(guidance_scale)

    def engine_cfg(self, guidance_scale: float) -> dict:
        """The Engine arguments that describe how this model runs CFG."""
        return {"cfg_halves": self.cfg_halves(guidance_scale), "branches": self.denoiser_calls(guidance_scale)}

    def subset_attention_kwargs(self, sub: Sublayer, named: dict, picks: dict) -> dict:
        """The call arguments that make self-attention compute the query tokens `picks[stream] = idx`
        (B, k) only, with keys and values from every token (`named`: the sub-layer's own arguments by
        name). The usual case: queries from the chosen tokens, keys from the full sequence."""
        (stream, idx), = picks.items()
        x = named[sub.args[0]]
        return {sub.args[0]: gather(x, idx), "encoder_hidden_states": x}

    def attention_segments(self, sub: Sublayer, capture: dict) -> dict[str, tuple[int, int]]:
        """stream -> (start, length) on the key axis of a processor-captured attention call (a family
        whose processor captures q/k says where each stream's tokens are; FLUX: [text; image])."""
        return {sub.streams[0]: (0, capture["k"].shape[2])}

    def token_grid(self) -> tuple[int, int]:
        side = self.preset.latent_size // self.preset.transformer["patch_size"]
        return side, side

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self, pipe, conditions: Sequence[Any], seeds: Sequence[int], *, num_steps: int,
               guidance_scale: float) -> torch.Tensor | None:
        """Images as uint8 (N, H, W, 3), videos as (N, frames, H, W, 3), on the CPU; None on the meta device.

        Sample i's initial noise comes from its own generator seeded with seeds[i], so a sample does
        not depend on the batch it was drawn in.
        """
        if len(conditions) != len(seeds):
            raise ValueError(f"{len(conditions)} conditions but {len(seeds)} seeds")
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        images = self._call(pipe, list(conditions), generators, num_steps, guidance_scale)
        if images.device.type == "meta":
            return None
        # The same rounding as diffusers' numpy_to_pil.
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu()

    def sample_float(self, pipe, conditions: Sequence[Any], seeds: Sequence[int], *, num_steps: int,
                     guidance_scale: float, grad: bool = False) -> torch.Tensor:
        """Float images in [0, 1], NCHW, on the pipeline's device; `grad` keeps the autograd graph of the
        whole sampling run (DiffSparse's training differentiates through it)."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        return self._call(pipe, list(conditions), generators, num_steps, guidance_scale, grad)

    @staticmethod
    def _runner(pipe, grad: bool):
        """The pipeline's __call__; with `grad`, the same code without the no_grad() diffusers wraps it in."""
        return type(pipe).__call__.__wrapped__.__get__(pipe) if grad else pipe

    def _call(self, pipe, conditions, generators, num_steps, guidance_scale, grad=False) -> torch.Tensor:
        """Run the diffusers pipeline; float images in [0, 1], NCHW."""
        raise NotImplementedError


def _presets():
    from models.registry import MODELS

    return MODELS


def adapter_for(preset: ModelPreset) -> ModelAdapter:
    module = importlib.import_module(f"models.{preset.family}")
    return module.Adapter(preset)
