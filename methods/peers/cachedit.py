"""cache-dit's DBCache (PyPI `cache-dit`, the optional extra `peers`) as a row, attached with
`cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(...))` and removed with `cache_dit.disable_cache`.

DBCache ("dual block cache"): the first `Fn_compute_blocks` blocks always run; when the residual they
produce changed by less than `residual_diff_threshold` since the last full step, the middle blocks are
skipped (their cached residual added) and the last `Bn_compute_blocks` run again. cache-dit resets its
context at the start of each pipeline call itself. Its diff is taken over the whole batch, so it samples
one image per call. Its own per-run report (`cache_dit.summary`) goes into the MAC JSON.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import check_at_least, check_positive_int
from methods.peers.base import PeerMethod, PeerRun
from methods.settings import invalid

EXTRA = 'pip install -e ".[peers]"'


def installed() -> bool:
    """Whether the optional extra is installed, without importing it (dsbench doctor)."""
    import importlib.util

    return importlib.util.find_spec("cache_dit") is not None


def import_cache_dit():
    try:
        import cache_dit
    except ImportError:
        raise ImportError(f"the cache-dit rows need the cache-dit package, an optional extra: {EXTRA}") from None
    return cache_dit


class CacheDitRun(PeerRun):
    def __init__(self, pipe, cache_config, calibrator_config):
        super().__init__(per_image=True)
        self.cache_dit, self.pipe = import_cache_dit(), pipe
        self.cache_dit.enable_cache(pipe, cache_config=cache_config, calibrator_config=calibrator_config)

    def stats(self) -> dict:
        """cache-dit's summary of the last call: cached steps and residual diffs per block list."""
        keep = ("cached_steps", "residual_diffs", "accumulated_cached_steps", "accumulated_executed_steps",
                "cfg_cached_steps")
        return {"cache_dit_summary": [{k: getattr(s, k) for k in keep if hasattr(s, k)}
                                      for s in self.cache_dit.summary(self.pipe, details=False, logging=False)]}

    def detach(self) -> None:
        self.cache_dit.disable_cache(self.pipe)


class DBCache(PeerMethod):
    """`cachedit_dbcache`: cache-dit's DBCacheConfig (its field names and defaults, except
    Fn_compute_blocks, which must stay below the model's depth: checked when it attaches).
    `taylorseer_order`: >= 1 turns on cache-dit's TaylorSeer calibrator of that order (null: off)."""

    name = "cachedit_dbcache"
    library = "cache-dit"
    per_image = True

    @dataclass(frozen=True)
    class Config:
        """Fn_compute_blocks (8), Bn_compute_blocks (0), residual_diff_threshold (0.08), max_warmup_steps (8),
        warmup_interval (1), max_cached_steps (-1: unlimited), max_continuous_cached_steps (-1): as cache-dit's
        DBCacheConfig; taylorseer_order: the calibrator (null: none)."""

        Fn_compute_blocks: int = 8
        Bn_compute_blocks: int = 0
        residual_diff_threshold: float = 0.08
        max_warmup_steps: int = 8
        warmup_interval: int = 1
        max_cached_steps: int = -1
        max_continuous_cached_steps: int = -1
        taylorseer_order: int | None = None

        def __post_init__(self):
            check_positive_int("cachedit_dbcache", "Fn_compute_blocks", self.Fn_compute_blocks)
            check_at_least("cachedit_dbcache", "Bn_compute_blocks", self.Bn_compute_blocks, 0, integer=True)
            check_at_least("cachedit_dbcache", "residual_diff_threshold", self.residual_diff_threshold, 0)
            check_at_least("cachedit_dbcache", "max_warmup_steps", self.max_warmup_steps, 0, integer=True)
            check_positive_int("cachedit_dbcache", "warmup_interval", self.warmup_interval)
            for k in ("max_cached_steps", "max_continuous_cached_steps"):
                check_at_least("cachedit_dbcache", k, getattr(self, k), -1, integer=True)
            if self.taylorseer_order is not None:
                check_positive_int("cachedit_dbcache", "taylorseer_order", self.taylorseer_order)

    def check_depth(self, blocks: int) -> None:
        c = self.config
        if c.Fn_compute_blocks + c.Bn_compute_blocks >= blocks:
            raise invalid("cachedit_dbcache", "Fn_compute_blocks",
                          f"+ Bn_compute_blocks ({c.Fn_compute_blocks} + {c.Bn_compute_blocks}) must be below the "
                          f"model's {blocks} blocks, or nothing is ever cached")

    def attach(self, pipe, adapter, num_steps: int, guidance_scale: float) -> CacheDitRun:
        self.check_depth(adapter.layout(pipe).total_blocks)
        cache_dit = import_cache_dit()
        c = self.config
        cache_config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=c.Fn_compute_blocks, Bn_compute_blocks=c.Bn_compute_blocks,
            residual_diff_threshold=c.residual_diff_threshold, max_warmup_steps=c.max_warmup_steps,
            warmup_interval=c.warmup_interval, max_cached_steps=c.max_cached_steps,
            max_continuous_cached_steps=c.max_continuous_cached_steps, num_inference_steps=num_steps)
        calibrator = (cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=c.taylorseer_order)
                      if c.taylorseer_order is not None else None)
        return CacheDitRun(pipe, cache_config, calibrator)
