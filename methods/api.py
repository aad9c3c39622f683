"""Library use: attach a method to a supported diffusers pipeline.

    from methods import accelerate
    handle = accelerate(pipe, "toca", fresh_ratio=0.3)
    images = pipe(prompt, num_inference_steps=20).images
    handle.detach()

The plan is built when each pipeline call starts (from the scheduler's timesteps), and all state is
reset per call: unlike diffusers' own hooks on PixArt/DiT, nothing leaks from one call into the next.
"""
from __future__ import annotations

from methods.base import Method
from methods.engine import Engine
from methods.registry import make_method


class Accelerated:
    def __init__(self, pipe, adapter, method, guidance_scale: float | None):
        self.pipe, self.adapter, self.method = pipe, adapter, method
        cfg = adapter.engine_cfg(guidance_scale if guidance_scale is not None else 2.0)
        controller = None
        layout = adapter.layout(pipe)
        if method.dynamic:
            controller = method.controller(0, layout.total_blocks)
        self.engine = Engine(adapter, pipe, None, method.ranking(), **cfg, controller=controller,
                             plan_for=lambda steps: method.plan(steps, layout))
        if controller is not None:  # retention depends on the run's length
            self.engine.plan_for = lambda steps: (self._retain(steps), method.plan(steps, layout))[1]

    def _retain(self, steps: int) -> None:
        for controller in self.engine.controllers:
            controller.retained = self.method.retained(steps)

    def attach(self) -> "Accelerated":
        self.engine.attach()
        return self

    def detach(self) -> None:
        self.engine.detach()

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()


def adapter_for_pipeline(pipe):
    """The adapter of a diffusers pipeline, with a preset derived from its own configs."""
    from models.base import adapter_for
    from models.registry import ModelPreset

    families = {"PixArtTransformer2DModel": "pixart", "DiTTransformer2DModel": "dit",
                "WanTransformer3DModel": "wan", "FluxTransformer2DModel": "flux"}
    cls = type(pipe.transformer).__name__
    if cls not in families:
        raise ValueError(f"unsupported denoiser {cls}; supported: {', '.join(families)}")
    tcfg, vcfg = dict(pipe.transformer.config), dict(pipe.vae.config)
    # The resolution is a placeholder: the engine reads each call's own token grid (grid_from_call).
    preset = ModelPreset(name=f"user_{families[cls]}", family=families[cls], resolution=0, transformer=tcfg, vae=vcfg)
    adapter = adapter_for(preset)
    adapter.prepare(pipe)
    return adapter


def accelerate(pipe, method: str, guidance_scale: float | None = None, **settings) -> Accelerated:
    """Attach `method` (a registered name, with its settings) to `pipe`; returns a handle with detach().

    `guidance_scale` tells whether the pipeline runs CFG (> 1, the default assumption; PixArt and DiT
    batch the two branches, so both halves of a sample choose the same tokens; Wan calls the denoiser
    twice a step, and each call keeps its own caches). FLUX.1-schnell runs no CFG whatever it is."""
    m = make_method(method, **settings)
    if m.replaces_denoiser:  # attaching hooks would run the pipeline's own network under this method's name
        raise ValueError(f"{method!r} replaces the pipeline's transformer: set pipe.transformer = "
                         f"make_method({method!r}, ...).denoiser(pipe, adapter) yourself (dsbench's cells do)")
    if m.attaches_peer:  # another library's cache: our engine would run the plain model under its name
        raise ValueError(f"{method!r} is {m.library}'s cache: attach it with make_method({method!r}, ...)"
                         ".attach(pipe, adapter_for_pipeline(pipe), num_steps, guidance_scale), which returns a "
                         "handle with reset() and detach()")
    if type(m).num_steps is not Method.num_steps:
        raise ValueError(f"{method!r} changes the number of sampling steps: pass num_inference_steps to the "
                         "pipeline yourself instead")
    return Accelerated(pipe, adapter_for_pipeline(pipe), m, guidance_scale).attach()
