"""Streaming Frechet distance (FID), numerically compatible with clean-fid.

Features are reduced to running float64 sums batch by batch (torchmetrics-style
update/compute/reset), so 50k images are never held in memory. Two of clean-fid's modes, chosen
when the network is loaded (``metrics.networks.load_fid_network(mode=)``): "clean" resizes with
clean-fid's own PIL-bicubic float resizer (at 299 px this *is* clean-fid "clean"); in
"legacy_tensorflow" the network gets native-size images and resizes inside with TF1 bilinear.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from metrics.images import rebatch


class FeatureStats:
    """Running mean/covariance of (N, D) feature batches."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._shift = self._s1 = self._s2 = None

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("non-finite features")
        if self._shift is None:
            # Sums are taken around the first batch's mean: same algebra as raw sums, but
            # avoids the cancellation in E[xx^T] - mu mu^T when |mu| >> std.
            d = f.shape[1]
            self._shift = f.mean(axis=0) if len(f) else np.zeros(d)
            self._s1, self._s2 = np.zeros(d), np.zeros((d, d))
        elif f.shape[1] != self._s1.shape[0]:
            raise ValueError(f"feature dim changed: {f.shape[1]} vs {self._s1.shape[0]}")
        c = f - self._shift
        self._s1 += c.sum(axis=0)
        self._s2 += c.T @ c
        self.n += len(f)

    def mean(self) -> np.ndarray:
        self._need(1)
        return self._shift + self._s1 / self.n

    def cov(self) -> np.ndarray:
        """Unbiased covariance, as np.cov(x, rowvar=False)."""
        self._need(2)
        return (self._s2 - np.outer(self._s1, self._s1) / self.n) / (self.n - 1)

    def _need(self, k: int) -> None:
        if self.n < k:
            raise ValueError(f"need at least {k} samples, have {self.n}")

    def save(self, path: str | Path, meta: dict) -> None:
        """Write mu/sigma/n/meta to ``.npz`` atomically (temp file in the same dir + os.replace)."""
        from dsbench.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # np.savez would append ".npz" to a name
            np.savez(fh, mu=self.mean(), sigma=self.cov(), n=np.int64(self.n),
                     meta=np.array(json.dumps(meta, sort_keys=True)))

    @staticmethod
    def load(path: str | Path) -> tuple[np.ndarray, np.ndarray, int, dict]:
        with np.load(path, allow_pickle=False) as z:
            return z["mu"], z["sigma"], int(z["n"]), json.loads(str(z["meta"]))


def image_features(batches: Iterable[np.ndarray], network, device, batch_size: int = 64,
                   resolution: int | None = None) -> Iterator[np.ndarray]:
    """Yield (B, D) features for uint8 (N,H,W,3) batches, re-batched to ``batch_size``."""
    import torch
    from cleanfid.resize import make_resizer

    s = int(network.input_size)
    if getattr(network, "resize_inside", False):
        def resize(img):  # legacy_tensorflow: no resize outside (clean-fid's identity resizer)
            return img.astype(np.float32)
    else:
        resize = make_resizer("PIL", False, "bicubic", (s, s))  # float32 HWC, clipped, not quantised

    def run(chunk: list[np.ndarray]) -> np.ndarray:
        # HWC->CHW exactly as clean-fid's ResizeDataset (ToTensor on float32 does not rescale)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(chunk).transpose(0, 3, 1, 2)))
        with torch.no_grad():
            f = network(x.to(device)).detach().cpu().numpy()
        if not np.isfinite(f).all():
            raise ValueError("network produced non-finite features")
        return f

    for chunk in rebatch(batches, batch_size, resolution):
        yield run([resize(img) for img in chunk])


def _moments(stats) -> tuple[np.ndarray, np.ndarray, int]:
    if isinstance(stats, FeatureStats):
        return stats.mean(), stats.cov(), stats.n
    mu, sigma, n = stats[:3]  # tuple as returned by FeatureStats.load
    return mu, sigma, n


def frechet_distance(stats_a, stats_b) -> float:
    """FID between two FeatureStats (or ``FeatureStats.load`` tuples)."""
    from cleanfid.fid import frechet_distance as _fd

    (mu1, s1, n1), (mu2, s2, n2) = _moments(stats_a), _moments(stats_b)
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs >= 2 samples per side, got {n1} and {n2}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape} vs {mu2.shape}")
    if min(n1, n2) <= mu1.shape[0]:
        # Singular covariance: clean-fid then prints and retries with eps on the diagonal.
        warnings.warn(f"FID with n={min(n1, n2)} <= feature dim {mu1.shape[0]}: singular covariance, "
                      "value is unreliable", RuntimeWarning, stacklevel=2)
    with warnings.catch_warnings():  # scipy>=1.16 deprecates the sqrtm(disp=) clean-fid passes
        warnings.simplefilter("ignore", DeprecationWarning)
        d = float(_fd(mu1, s1, mu2, s2))
    if not np.isfinite(d):
        raise ValueError(f"non-finite Frechet distance {d}")
    if d < 0:
        # sqrtm round-off gives ~-1e-6 for identical sets; anything larger is a real problem.
        tol = 1e-6 * max(1.0, float(np.trace(s1) + np.trace(s2)))
        if d < -tol:
            raise ValueError(f"negative Frechet distance {d} beyond round-off")
        d = 0.0
    return d


def image_list_sha256(names: Sequence[str]) -> str:
    """Hash of the ordered reference file list, stored with the statistics."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def reference_meta(resolution: int, network, n: int, image_names: Sequence[str]) -> dict:
    return {"resolution": int(resolution), "resize": network.resize_id, "network_id": network.network_id,
            "n": int(n), "image_list_sha256": image_list_sha256(image_names)}


def check_compatible(ref_meta: dict, resolution: int, network) -> None:
    """Refuse reference statistics made at another resolution, resize recipe (FID mode) or network."""
    problems = []
    if ref_meta.get("resolution") != resolution:
        problems.append(f"resolution {ref_meta.get('resolution')} != {resolution}")
    if ref_meta.get("network_id") != network.network_id:
        problems.append(f"network {ref_meta.get('network_id')!r} != {network.network_id!r}")
    if ref_meta.get("resize") != network.resize_id:
        problems.append(f"resize {ref_meta.get('resize')!r} != {network.resize_id!r} (another fid_mode)")
    if problems:
        raise ValueError("reference statistics are incompatible (mixing them is an error): "
                         + "; ".join(problems))


def make_reference_stats(ref_batches: Iterable[np.ndarray], image_names: Sequence[str], network,
                         device, resolution: int, out_path: str | Path, batch_size: int = 64,
                         identity: dict | None = None) -> dict:
    """Compute and save reference statistics with their meta (and `identity`, what the caller checks
    them against before use); returns the meta."""
    stats = FeatureStats()
    for f in image_features(ref_batches, network, device, batch_size, resolution):
        stats.update(f)
    if stats.n != len(image_names):
        raise ValueError(f"{stats.n} images but {len(image_names)} names")
    meta = reference_meta(resolution, network, stats.n, image_names)
    if identity is not None:
        meta["identity"] = identity
    stats.save(out_path, meta)
    return meta


def fid_from_batches(gen_batches: Iterable[np.ndarray], ref_stats_path: str | Path, network,
                     device, resolution: int, batch_size: int = 64) -> float:
    """FID of generated uint8 batches against saved reference statistics."""
    mu, sigma, n, meta = FeatureStats.load(ref_stats_path)
    check_compatible(meta, resolution, network)
    stats = FeatureStats()
    for f in image_features(gen_batches, network, device, batch_size, resolution):
        stats.update(f)
    return frechet_distance(stats, (mu, sigma, n))
