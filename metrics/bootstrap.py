"""Bootstrap confidence intervals of the quality columns, over the evaluated samples.

Every interval is scipy's percentile bootstrap (``scipy.stats.bootstrap``) with a seeded generator, so the
same samples and seed give the same interval. A column's interval is reported as its half-width, ``(hi - lo) / 2``,
beside the point estimate computed on all samples (``value ± half-width``).

- Per-sample metrics (PSNR, SSIM, LPIPS to the full model; alignment hits): the mean of the resampled values.
- FID: the Fréchet distance of the resampled feature rows to the reference's fixed moments. Only the
  generated side is resampled: the reference statistics are a fixed target (at FID-30k/50k they are the
  dataset's; on the proxies 1000 procedural images), so the interval is the sampling noise of the method's
  samples, which is what separates two rows evaluated against the same reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class BootstrapSettings:
    """resamples: for the per-sample means; fid_resamples: for FID (each costs a covariance and an
    eigendecomposition of the feature dimension: a few seconds at Inception's 2048 on a CPU, milliseconds on a GPU); level: the
    interval's coverage; seed: of the resampling. 0 resamples: no interval for those columns."""
    resamples: int = 2000
    fid_resamples: int = 200
    level: float = 0.95
    seed: int = 0

    def __post_init__(self):
        for name in ("resamples", "fid_resamples", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"bootstrap.{name}: must be an integer >= 0, got {v!r}")
        if not isinstance(self.level, (int, float)) or isinstance(self.level, bool) or not 0 < self.level < 1:
            raise ValueError(f"bootstrap.level: must be a number in (0, 1), got {self.level!r}")
        if 0 < self.resamples < 100 or 0 < self.fid_resamples < 20:
            raise ValueError("bootstrap: use at least 100 resamples (20 for FID), or 0 for no interval; "
                             f"got {self.resamples} / {self.fid_resamples}")

    @classmethod
    def of(cls, settings: dict | None) -> "BootstrapSettings":
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"bootstrap: unknown setting(s) {unknown}")
        return cls(**settings)


def _interval(data: tuple, statistic: Callable, resamples: int, level: float, seed: int,
              vectorized: bool) -> float:
    from scipy.stats import bootstrap

    res = bootstrap(data, statistic, n_resamples=resamples, confidence_level=level, method="percentile",
                    vectorized=vectorized, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"bootstrap interval is not finite: [{lo}, {hi}]")
    return (hi - lo) / 2


def mean_half_width(values, settings: BootstrapSettings) -> float | None:
    """Half-width of the percentile-bootstrap interval of the mean of per-sample `values`; None without
    resamples, or under 2 values. A constant column has width 0."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not settings.resamples or len(x) < 2:
        return None
    if np.ptp(x) == 0:
        return 0.0  # scipy warns on a degenerate distribution; every resample has the same mean
    return _interval((x,), np.mean, settings.resamples, settings.level, settings.seed, vectorized=True)


class FixedReferenceFrechet:
    """The Fréchet distance of feature rows to fixed reference moments, with the reference's matrix square
    root taken once: tr((Σ_r^½ Σ Σ_r^½)^½) = tr((Σ Σ_r)^½), the eigenvalues of a symmetric matrix, in float64
    on `device` (a GPU makes a resample at 2048 dimensions take milliseconds). Written here because
    clean-fid's ``frechet_distance`` (the point estimate) takes a general ``sqrtm`` of the product on the
    CPU each call, too slow for hundreds of resamples; the two agree to round-off (tests/test_bootstrap.py)."""

    def __init__(self, features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, device="cpu") -> None:
        import torch

        as64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # noqa: E731
        self.features, self.mu_ref, sigma_ref = as64(features), as64(mu_ref), as64(sigma_ref)
        if self.features.ndim != 2 or self.features.shape[1] != len(self.mu_ref):
            raise ValueError(f"features must be (N, {len(self.mu_ref)}), got {tuple(self.features.shape)}")
        w, v = torch.linalg.eigh(sigma_ref)
        self.root_ref = (v * w.clamp(min=0).sqrt()) @ v.T
        self.trace_ref = float(torch.trace(sigma_ref))

    def __len__(self) -> int:
        return len(self.features)

    def __call__(self, rows: np.ndarray) -> float:
        import torch

        f = self.features[torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.features.device)]
        mu, centred = f.mean(0), f - f.mean(0)
        sigma = centred.T @ centred / (len(f) - 1)
        cross = torch.linalg.eigvalsh(self.root_ref @ sigma @ self.root_ref).clamp(min=0).sqrt().sum()
        diff = mu - self.mu_ref
        return float(diff @ diff + torch.trace(sigma) + self.trace_ref - 2 * cross)


def fid_half_width(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                   settings: BootstrapSettings, device="cpu") -> float | None:
    """Half-width of the percentile-bootstrap interval of FID over the generated feature rows (the
    reference fixed). None without resamples, or with no more samples than feature dimensions: FID itself
    is then unreliable (a singular covariance, metrics/fid.py warns) and a resample's is more so."""
    features = np.asarray(features)
    if not settings.fid_resamples or len(features) <= features.shape[1]:
        return None
    distance = FixedReferenceFrechet(features, mu_ref, sigma_ref, device)
    rows = np.arange(len(distance))
    return _interval((rows,), distance, settings.fid_resamples, settings.level, settings.seed, vectorized=False)
