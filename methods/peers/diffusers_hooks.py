"""diffusers' own cache hooks (diffusers.hooks, 0.42) as rows: FirstBlockCache, TaylorSeerCache, MagCache,
FasterCache and PyramidAttentionBroadcast.

What running them on these pipelines takes, all through diffusers' public API, none of it a patch:
- PixArt's and DiT's transformers do not inherit `CacheMixin`, and their pipelines set no cache context.
  `CacheMixin.enable_cache` / `disable_cache` / `cache_context` only use the module they are given, so we
  call them unbound on the transformer, and a forward pre-hook opens the context ("cond": one call per
  step carries both CFG halves) around each denoiser call. Wan's and FLUX's pipelines open their own.
- The stateful hooks keep step counters across pipeline calls (TaylorSeerCache would start the next call
  mid-cycle): `HookRegistry.reset_stateful_hooks` runs before every call.
- PAB and FasterCache ask for the current timestep through a callback: it returns the timestep the
  denoiser was last called with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import check_at_least, check_positive_int, check_ratio
from methods.peers.base import PeerMethod, PeerRun
from methods.settings import invalid

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class HookRun(PeerRun):
    """diffusers' hooks on one transformer, with the cache context and timestep callback they need."""

    def __init__(self, transformer, apply, config, per_image: bool):
        from diffusers.hooks import HookRegistry
        from diffusers.models.cache_utils import CacheMixin

        super().__init__(per_image)
        self.transformer, self.timestep = transformer, None
        self._mixin = CacheMixin
        self._owns_context = not isinstance(transformer, CacheMixin)  # else the pipeline opens it
        self._open = None
        before = _hook_names(transformer)
        apply(transformer, config)
        # What CacheMixin.enable_cache does after applying: block registries made since are seen by contexts.
        self.registry = HookRegistry.check_if_exists_or_initialize(transformer)
        self.registry.invalidate_child_registries_cache()
        self._added = {m: names - before.get(m, set()) for m, names in _hook_names(transformer).items()}
        self._handles = [transformer.register_forward_pre_hook(self._before, with_kwargs=True),
                         transformer.register_forward_hook(self._after, always_call=True)]

    def current_timestep(self) -> int:
        t = self.timestep
        return int(t.flatten()[0]) if isinstance(t, torch.Tensor) else int(t)

    def _before(self, module, args, kwargs):
        self.timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self._owns_context:
            self._open = self._mixin.cache_context(module, "cond")
            self._open.__enter__()

    def _after(self, module, args, output):
        if self._open is not None:
            self._open, ctx = None, self._open
            ctx.__exit__(None, None, None)

    def reset(self) -> None:
        self.registry.reset_stateful_hooks(recurse=True)

    def detach(self) -> None:
        """Remove exactly the hooks this peer added (diffusers' disable_cache, which PixArt and DiT lack)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for module, names in self._added.items():
            for name in names:
                module._diffusers_hook.remove_hook(name, recurse=False)
        self._added = {}
        self.registry.invalidate_child_registries_cache()


def _hook_names(root) -> dict:
    """module -> the names of the diffusers hooks registered on it, for `root` and everything below it."""
    return {m: set(m._diffusers_hook.hooks) for m in root.modules() if hasattr(m, "_diffusers_hook")}


class DiffusersHook(PeerMethod):
    library = "diffusers"
    apply: ClassVar[str]  # the public diffusers.hooks function that installs it

    def hook_config(self, timestep, adapter, num_steps: int, guidance_scale: float):
        """The diffusers config object for this run (model-dependent fields filled in); `timestep()`: the
        timestep of the denoiser call under way."""
        raise NotImplementedError

    def attach(self, pipe, adapter, num_steps: int, guidance_scale: float) -> HookRun:
        from diffusers import hooks

        holder: dict = {}
        config = self.hook_config(lambda: holder["run"].current_timestep(), adapter, num_steps, guidance_scale)
        holder["run"] = run = HookRun(adapter.denoiser(pipe), getattr(hooks, self.apply), config, self.per_image)
        return run


def _fields(config, but=()) -> dict:
    """A settings block as the peer's config keywords (its fields carry the peer's own names)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in but}


def _timestep_range(name: str, key: str, value) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and value[0] <= value[1]):
        raise invalid(name, key, f"must be two integer timesteps [low, high] with low <= high, got {value!r}")
    return tuple(value)


class FirstBlockCache(DiffusersHook):
    """`diffusers_fbc`: FirstBlockCacheConfig. The first block always runs; if its residual changed by less
    than `threshold` (relative mean absolute difference) since the last full step, the other blocks are
    skipped and their cached residual added. The difference is taken over the whole batch, so a sample's
    image would depend on its batch: it samples one image per call."""

    name = "diffusers_fbc"
    apply = "apply_first_block_cache"
    per_image = True

    @dataclass(frozen=True)
    class Config:
        """threshold: the residual change below which the remaining blocks are skipped (diffusers: 0.05)."""

        threshold: float = 0.05

        def __post_init__(self):
            check_at_least("diffusers_fbc", "threshold", self.threshold, 0)

    def hook_config(self, timestep, adapter, num_steps, guidance_scale):
        from diffusers.hooks import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=self.config.threshold)


class TaylorSeerCache(DiffusersHook):
    """`diffusers_taylorseer`: TaylorSeerCacheConfig. Every `cache_interval` steps after the first
    `disable_cache_before_step` the hooked modules run and update their Taylor factors; in between their
    outputs are forecast. Deviation from diffusers' default: `cache_identifiers: null` hooks every block's
    attention and MLP sub-layers (the modules our TaylorSeer forecasts), because diffusers' default patterns
    match no module of PixArt, DiT or Wan and would run the full model under this name."""

    name = "diffusers_taylorseer"
    apply = "apply_taylorseer_cache"

    @dataclass(frozen=True)
    class Config:
        """cache_interval, disable_cache_before_step, disable_cache_after_step, max_order: as diffusers'
        TaylorSeerCacheConfig (defaults 5, 3, none, 1); taylor_factors_dtype: "bfloat16" (diffusers' default),
        "float16", "float32", or null for the activations' own; cache_identifiers: regexes (re.fullmatch) of the
        module names to forecast, null for the model's sub-layers."""

        cache_interval: int = 5
        disable_cache_before_step: int = 3
        disable_cache_after_step: int | None = None
        max_order: int = 1
        taylor_factors_dtype: str | None = "bfloat16"
        cache_identifiers: list | None = None

        def __post_init__(self):
            check_positive_int("diffusers_taylorseer", "cache_interval", self.cache_interval)
            check_positive_int("diffusers_taylorseer", "max_order", self.max_order)
            check_at_least("diffusers_taylorseer", "disable_cache_before_step", self.disable_cache_before_step, 0,
                           integer=True)
            if self.disable_cache_after_step is not None:
                check_at_least("diffusers_taylorseer", "disable_cache_after_step", self.disable_cache_after_step,
                               0, integer=True)
            if self.taylor_factors_dtype is not None and self.taylor_factors_dtype not in DTYPES:
                raise invalid("diffusers_taylorseer", "taylor_factors_dtype",
                              f"must be one of {', '.join(DTYPES)} or null, got {self.taylor_factors_dtype!r}")
            ids = self.cache_identifiers
            if ids is not None and not (ids and all(isinstance(p, str) for p in ids)):
                raise invalid("diffusers_taylorseer", "cache_identifiers",
                              f"must be a non-empty list of regexes or null, got {ids!r}")

    def hook_config(self, timestep, adapter, num_steps, guidance_scale):
        from diffusers.hooks import TaylorSeerCacheConfig

        c = self.config
        ids = c.cache_identifiers if c.cache_identifiers is not None else sublayer_patterns(adapter)
        return TaylorSeerCacheConfig(
            cache_interval=c.cache_interval, disable_cache_before_step=c.disable_cache_before_step,
            disable_cache_after_step=c.disable_cache_after_step, max_order=c.max_order,
            taylor_factors_dtype=DTYPES.get(c.taylor_factors_dtype), cache_identifiers=list(ids))


def sublayer_patterns(adapter) -> list[str]:
    """Regexes naming every block's cached sub-layers (`transformer_blocks.3.attn1`), the modules our engine
    caches, from the adapter's block groups."""
    return [rf"{g.name}\.\d+\.({'|'.join(g.sublayer_names)})" for g in adapter.groups]


class PyramidAttentionBroadcast(DiffusersHook):
    """`diffusers_pab`: PyramidAttentionBroadcastConfig. Within each timestep range, an attention layer of a
    kind reruns every `…_block_skip_range` calls and broadcasts its last output in between."""

    name = "diffusers_pab"
    apply = "apply_pyramid_attention_broadcast"

    @dataclass(frozen=True)
    class Config:
        """spatial_attention_block_skip_range, cross_attention_block_skip_range: reuse spans of self- and
        cross-attention (null: never reused; at least one must be set); spatial_attention_timestep_skip_range,
        cross_attention_timestep_skip_range: [low, high] timesteps where reuse may happen (diffusers' default
        [100, 800])."""

        spatial_attention_block_skip_range: int | None = None
        cross_attention_block_skip_range: int | None = None
        spatial_attention_timestep_skip_range: list = (100, 800)
        cross_attention_timestep_skip_range: list = (100, 800)

        def __post_init__(self):
            spans = ("spatial_attention_block_skip_range", "cross_attention_block_skip_range")
            if all(getattr(self, k) is None for k in spans):
                raise invalid("diffusers_pab", spans[0], "or cross_attention_block_skip_range must be set "
                                                          "(both null reuse nothing)")
            for k in spans:
                if getattr(self, k) is not None:
                    check_positive_int("diffusers_pab", k, getattr(self, k))
            for k in ("spatial_attention_timestep_skip_range", "cross_attention_timestep_skip_range"):
                object.__setattr__(self, k, _timestep_range("diffusers_pab", k, getattr(self, k)))

    def hook_config(self, timestep, adapter, num_steps, guidance_scale):
        from diffusers.hooks import PyramidAttentionBroadcastConfig

        return PyramidAttentionBroadcastConfig(**_fields(self.config), current_timestep_callback=timestep)


class FasterCache(DiffusersHook):
    """`diffusers_fastercache`: FasterCacheConfig. Self-attention outputs reused between every
    `spatial_attention_block_skip_range` calls (extrapolated from the last two), and the unconditional CFG
    branch reused between every `unconditional_batch_skip_range` steps with a frequency-domain correction.
    The tensor format and whether the model is guidance-distilled come from the model."""

    name = "diffusers_fastercache"
    apply = "apply_faster_cache"
    unsupported: ClassVar[dict[str, str]] = {
        "dit": "its hook splits the batch's inputs into CFG halves by keyword (encoder_hidden_states, …), "
               "and DiT's class_labels are not among them (the run fails on a size mismatch)",
        "flux": "FLUX's latents reach the transformer packed as (batch, tokens, channels), a layout FasterCache's "
                "tensor_format (BCFHW, BFCHW, BCHW) does not name"}

    @dataclass(frozen=True)
    class Config:
        """As diffusers' FasterCacheConfig (its defaults): spatial_attention_block_skip_range 2,
        spatial_attention_timestep_skip_range [-1, 681], unconditional_batch_skip_range 5,
        unconditional_batch_timestep_skip_range [-1, 641], low_frequency_weight_update_timestep_range
        [99, 901], high_frequency_weight_update_timestep_range [-1, 301], alpha_low_frequency 1.1,
        alpha_high_frequency 1.1; attention_weight: the reuse weight (diffusers' fallback 0.5 when no callback
        is given)."""

        spatial_attention_block_skip_range: int = 2
        spatial_attention_timestep_skip_range: list = (-1, 681)
        unconditional_batch_skip_range: int = 5
        unconditional_batch_timestep_skip_range: list = (-1, 641)
        low_frequency_weight_update_timestep_range: list = (99, 901)
        high_frequency_weight_update_timestep_range: list = (-1, 301)
        alpha_low_frequency: float = 1.1
        alpha_high_frequency: float = 1.1
        attention_weight: float = 0.5

        def __post_init__(self):
            for k in ("spatial_attention_block_skip_range", "unconditional_batch_skip_range"):
                check_positive_int("diffusers_fastercache", k, getattr(self, k))
            for k in ("spatial_attention_timestep_skip_range", "unconditional_batch_timestep_skip_range",
                      "low_frequency_weight_update_timestep_range", "high_frequency_weight_update_timestep_range"):
                object.__setattr__(self, k, _timestep_range("diffusers_fastercache", k, getattr(self, k)))
            for k in ("alpha_low_frequency", "alpha_high_frequency"):
                check_at_least("diffusers_fastercache", k, getattr(self, k), 0)
            check_ratio("diffusers_fastercache", "attention_weight", self.attention_weight)

    def hook_config(self, timestep, adapter, num_steps, guidance_scale):
        from diffusers.hooks import FasterCacheConfig

        weight = self.config.attention_weight
        return FasterCacheConfig(
            **_fields(self.config, but=("attention_weight",)), attention_weight_callback=lambda module: weight,
            tensor_format=adapter.latent_format,
            is_guidance_distilled=guidance_scale <= 1, current_timestep_callback=timestep)


class MagCache(DiffusersHook):
    """`diffusers_magcache`: MagCacheConfig. After the first `retention_ratio` of the steps, a step skips
    every block (adding the cached residual) while the error accumulated from the calibrated magnitude
    ratios stays within `threshold`, at most `max_skip_steps` in a row. The ratios are the model's: rule
    calibrate_peer measures them with diffusers' own calibration mode on conditions disjoint from the
    evaluated ones (`calibration`: that file; dsbench fills in its path), or give `mag_ratios` yourself."""

    name = "diffusers_magcache"
    apply = "apply_mag_cache"
    calibrated = True

    @dataclass(frozen=True)
    class Config:
        """threshold, max_skip_steps, retention_ratio: as diffusers' MagCacheConfig (0.06, 3, 0.2);
        mag_ratios: one ratio per step (interpolated to the run's steps by diffusers), or null to read
        `calibration`; calibration: the JSON written by `dsbench calibrate-peer`; calibration_samples:
        conditions averaged by that calibration run."""

        threshold: float = 0.06
        max_skip_steps: int = 3
        retention_ratio: float = 0.2
        mag_ratios: list | None = None
        calibration: str | None = None
        calibration_samples: int = 4

        def __post_init__(self):
            check_at_least("diffusers_magcache", "threshold", self.threshold, 0)
            check_positive_int("diffusers_magcache", "max_skip_steps", self.max_skip_steps)
            check_ratio("diffusers_magcache", "retention_ratio", self.retention_ratio)
            check_positive_int("diffusers_magcache", "calibration_samples", self.calibration_samples)
            r = self.mag_ratios
            if r is not None and not (r and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)):
                raise invalid("diffusers_magcache", "mag_ratios", f"must be a non-empty list of numbers, got {r!r}")

    def ratios(self) -> list[float]:
        if self.config.mag_ratios is not None:
            return [float(v) for v in self.config.mag_ratios]
        from methods.peers.calibration import read_calibration

        return read_calibration(self.config.calibration, self.name)

    def hook_config(self, timestep, adapter, num_steps, guidance_scale):
        from diffusers.hooks import MagCacheConfig

        c = self.config
        return MagCacheConfig(threshold=c.threshold, max_skip_steps=c.max_skip_steps,
                              retention_ratio=c.retention_ratio, num_inference_steps=num_steps,
                              mag_ratios=self.ratios())

    def calibration_config(self, num_steps: int):
        from diffusers.hooks import MagCacheConfig

        return MagCacheConfig(num_inference_steps=num_steps, calibrate=True)
