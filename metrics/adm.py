"""ImageNet FID, sFID, precision/recall and Inception Score, compatible with OpenAI's ADM evaluation suite.

The ADM suite (guided-diffusion ``evaluations/evaluator.py``) is what DiT's Table 2 numbers come from. We
re-implement its formulas on torch-fidelity's port of the same TF Inception graph (with TF1-style bilinear
resize to 299), which agrees with the TF evaluator to about 0.1% (torch-fidelity's own comparison of its port):

- FID:  pool_3 features (2048) against the reference npz's ``mu, sigma``;
- sFID: the first 7 channels of ``mixed_6/conv`` (= ``Mixed_6d.branch1x1``, 17x17) flattened to 2023 dims,
  against ``mu_s, sigma_s``;
- precision/recall: k=3 manifolds of pool features, ADM's ``ManifoldEstimator(nhood_sizes=(3,),
  clamp_to_percentile=None)``, against the pool features of the npz's 10,000 images (``arr_0``);
- IS: softmax of the unbiased logits, 10 splits of 5000 in order (no shuffle, unlike torch-fidelity).

The suite is written against a small extractor contract, not Inception itself: any module with
``network_id``, ``dims = (pool, spatial, logits)`` and ``forward(uint8 NCHW) -> (pool, spatial, logits)``.
The proxies' shapes classifier implements it too (metrics/shapes_classifier.ShapesAdmExtractor), with a
reference batch of our own in ADM's npz format (``write_adm_reference``), so the smoke DAG runs this
exact code path on the DiT proxy.

Moments stream through ``metrics.fid.FeatureStats``. Precision/recall need every sample's pool feature at
once: 50,000 x 2048 float32 = 400 MB of host memory (plus the same on the device while P/R runs).
Nothing here downloads; missing files raise FileNotFoundError naming the file and a curl command.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from metrics.fid import FeatureStats, frechet_distance
from metrics.images import rebatch

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
REFERENCE_FILE = "VIRTUAL_imagenet256_labeled.npz"
REFERENCE_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
                 + REFERENCE_FILE)

POOL_DIM, SPATIAL_DIM, LOGITS_DIM = 2048, 17 * 17 * 7, 1008
PR_K = 3                 # ADM: ManifoldEstimator(nhood_sizes=(3,))
IS_SPLIT_SIZE = 5000     # ADM: compute_inception_score(split_size=5000) -> 10 splits for 50k
ADM_N = 50_000           # 50 samples per class x 1000 classes
# The ADM npz stores no sample count; its stats cover the ImageNet-1k train set. frechet_distance uses n only
# for its "n <= dim" warning, so this value only has to be honest about the order of magnitude.
IMAGENET_TRAIN_N = 1_281_167
INCEPTION_DIMS = (POOL_DIM, SPATIAL_DIM, LOGITS_DIM)


def _stat_shapes(pool: int, spatial: int) -> dict[str, tuple[int, ...]]:
    return {"mu": (pool,), "sigma": (pool, pool), "mu_s": (spatial,), "sigma_s": (spatial, spatial)}


# ----------------------------------------------------------------------------- network


class AdmFeatures(NamedTuple):
    pool: np.ndarray     # (N, 2048) float32, pool_3
    spatial: np.ndarray  # (N, 2023) float32, mixed_6/conv[..., :7] in NHWC order
    logits: np.ndarray   # (N, 1008) float32, pool_3 @ W (no bias), for IS


class AdmInception(nn.Module):
    """torch-fidelity's TF-compatible InceptionV3 returning ADM's three feature sets; input uint8 NCHW RGB."""

    dims = INCEPTION_DIMS

    def __init__(self, net: nn.Module, network_id: str) -> None:
        super().__init__()
        self.net, self.network_id = net, network_id
        self._spatial: torch.Tensor | None = None
        self._hook = net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output) -> None:
        self._spatial = output  # (N, 192, 17, 17) after BN+ReLU, = TF's mixed_6/conv:0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool, logits = self.net(x)
        s, self._spatial = self._spatial, None
        # TF keeps NHWC, so ADM's spatial[..., :7] takes 7 *channels* at every position. Slicing NCHW
        # (s[:, :7]) takes 7 feature maps instead: the bug behind sFID~299 in early PyTorch ports.
        spatial = s.movedim(1, -1)[..., :7].reshape(len(s), -1)
        return pool.float(), spatial.float(), logits.float()


def _inception_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def load_adm_extractor(weights_dir: str | Path | None, device: str | torch.device,
                       filename: str = INCEPTION_FILE) -> AdmInception:
    """The ADM feature network from ``weights_dir/filename`` (torch-fidelity's converted TF Inception)."""
    path = Path(weights_dir) / filename if weights_dir is not None else Path(filename)
    if weights_dir is None or not path.is_file():
        raise FileNotFoundError(
            f"ADM Inception weights not found: {path}. Fetch them with `curl -L -o {path} {INCEPTION_URL}` "
            "(torch-fidelity's conversion of the TF Inception used by the ADM evaluator)."
        )
    data = path.read_bytes()
    # torch-fidelity unpickles with weights_only=False; vet the very same bytes with weights_only=True first,
    # so nothing in the file can run as code.
    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net = _inception_class()("inception-v3-compat", ["2048", "logits_unbiased"],
                             feature_extractor_weights_path=io.BytesIO(data))
    network_id = f"inception-2015-12-05-torch-fidelity-{hashlib.sha256(data).hexdigest()[:8]}"
    return AdmInception(net, network_id).to(device).eval()


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random-weight state dict of the same architecture (offline tests)."""
    from dsbench.io import atomic_path
    from models.base import seeded

    class _Unloaded(_inception_class()):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random init; the constructor insists on loading *something*

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with seeded(seed):
        net = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                # PyTorch's default init shrinks activations ~1e8-fold over Inception's depth;
                # He init keeps features O(0.1), so tests compare real numbers, not round-off.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return Path(path)


def adm_features(batches: Iterable[np.ndarray], extractor: AdmInception, device: str | torch.device,
                 batch_size: int = 100, resolution: int | None = None) -> Iterator[AdmFeatures]:
    """Yield ADM features for uint8 (N,H,W,3) RGB batches (Inception resizes to 299 itself, TF1 bilinear)."""
    for chunk in rebatch(batches, batch_size, resolution):
        chunk = np.ascontiguousarray(chunk) if chunk.flags.writeable else chunk.copy()  # from_numpy wants writable
        x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)  # uint8 NCHW
        with torch.no_grad():
            out = AdmFeatures(*(t.cpu().numpy() for t in extractor(x)))
        for name, f, d in zip(out._fields, out, extractor.dims):
            if f.shape != (len(chunk), d):
                raise ValueError(f"{name} features have shape {f.shape}, expected ({len(chunk)}, {d})")
            if not np.isfinite(f).all():
                raise ValueError(f"network produced non-finite {name} features")
        yield out


# ----------------------------------------------------------------------------- reference batch


def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


@dataclass(frozen=True)
class AdmReference:
    """An ADM reference batch: precomputed pool/spatial moments plus images (``arr_0``) for P/R."""

    path: Path
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray
    sigma_s: np.ndarray
    n_images: int
    resolution: int
    n_stats: int = IMAGENET_TRAIN_N
    network_id: str | None = None  # who made the moments; None: ADM's own file (its TF Inception)

    @property
    def reference_id(self) -> str:
        h = hashlib.sha256(self.mu.tobytes() + self.mu_s.tobytes())
        h.update(f"{self.n_images}x{self.resolution}".encode())
        return h.hexdigest()[:16]

    def images(self, batch_size: int = 500) -> Iterator[np.ndarray]:
        """Stream ``arr_0`` in uint8 (B,H,W,3) batches: the 10k images are 2 GB, never loaded at once."""
        shape = (self.resolution, self.resolution, 3)
        with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as fh:
            _npy_header(fh)
            for start in range(0, self.n_images, batch_size):
                b = min(batch_size, self.n_images - start)
                out = np.empty((b, *shape), dtype=np.uint8)  # writable, unlike np.frombuffer
                if fh.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise ValueError(f"{self.path}: arr_0 is truncated at image {start}")
                yield out


def _read_arr0_header(path: Path) -> tuple[int, ...]:
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as fh:
        shape, fortran, dtype = _npy_header(fh)
    if dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 images in [0,255], got {dtype}")
    if len(shape) != 4 or shape[-1] != 3 or fortran:
        raise ValueError(f"{path}: arr_0 must be uint8 NHWC RGB (N,H,W,3), got shape {shape}"
                         + (" in Fortran order" if fortran else ""))
    if shape[1] != shape[2]:
        raise ValueError(f"{path}: arr_0 images must be square, got {shape[1]}x{shape[2]}")
    return shape


def load_adm_reference(path: str | Path, resolution: int | None = None,
                       dims: tuple[int, ...] = INCEPTION_DIMS) -> AdmReference:
    """Load and check an ADM reference npz (stats in memory, images streamed later); ``dims``: the
    extractor's (pool, spatial, ...) sizes the moments must have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ADM reference batch not found: {path}. Fetch it with "
                                f"`curl -L -o {path} {REFERENCE_URL}` (guided-diffusion evaluations/README.md).")
    with np.load(path, allow_pickle=False) as z:
        missing = sorted({"mu", "sigma", "mu_s", "sigma_s", "arr_0"} - set(z.files))
        if missing:
            raise ValueError(f"{path}: not an ADM reference batch, missing keys {missing}")
        stats = {}
        for key, shape in _stat_shapes(*dims[:2]).items():
            a = np.asarray(z[key], dtype=np.float64)
            if a.shape != shape:
                raise ValueError(f"{path}: {key} has shape {a.shape}, expected {shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{path}: {key} has non-finite values")
            stats[key] = a
        n_stats = int(z["n"]) if "n" in z.files else IMAGENET_TRAIN_N
        network_id = str(z["network_id"]) if "network_id" in z.files else None
    shape = _read_arr0_header(path)
    if resolution is not None and shape[1] != resolution:
        raise ValueError(f"{path}: reference images are {shape[1]}px but samples are {resolution}px")
    return AdmReference(path, n_images=shape[0], resolution=shape[1], n_stats=n_stats, network_id=network_id,
                        **stats)


def write_adm_reference(path: str | Path, batches: Iterable[np.ndarray], extractor: nn.Module,
                        device: str | torch.device, batch_size: int = 100) -> AdmReference:
    """Write a reference batch in ADM's npz format from our own images: ``arr_0`` plus the extractor's
    pool and spatial moments, with ``n`` and ``network_id`` (which ADM's file lacks) so that moments made
    by one network are never compared with another's features. For data we generate (the proxies)."""
    from dsbench.io import atomic_path

    images, pool, spatial = [], FeatureStats(), FeatureStats()
    for chunk in batches:
        images.append(np.asarray(chunk))
        for f in adm_features([chunk], extractor, device, batch_size):
            pool.update(f.pool)
            spatial.update(f.spatial)
    arr = np.concatenate(images)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, arr_0=arr, mu=pool.mean(), sigma=pool.cov(), mu_s=spatial.mean(), sigma_s=spatial.cov(),
                 n=np.array(pool.n), network_id=np.array(extractor.network_id))
    return load_adm_reference(path, arr.shape[1], extractor.dims)


def check_reference_network(reference: AdmReference, extractor: nn.Module) -> None:
    """Moments and features must come from the same network (ADM's own file: any Inception port)."""
    if reference.network_id is not None and reference.network_id != extractor.network_id:
        raise ValueError(f"{reference.path}: reference moments were made with {reference.network_id}, "
                         f"but the samples' features come from {extractor.network_id}; rebuild the reference")
    pool, spatial = extractor.dims[:2]
    if reference.mu.shape != (pool,) or reference.mu_s.shape != (spatial,):
        raise ValueError(f"{reference.path}: reference moments are {len(reference.mu)}-d pool / "
                         f"{len(reference.mu_s)}-d spatial, the extractor gives {pool} / {spatial}")


def default_feature_cache(reference: AdmReference, network_id: str) -> Path:
    return reference.path.with_name(f"{reference.path.stem}.pool.{network_id}.npz")


def reference_pool_features(reference: AdmReference, extractor: AdmInception, device: str | torch.device,
                            batch_size: int = 100, cache_path: str | Path | None = None) -> np.ndarray:
    """Pool features (n_images, pool dim) of the reference images, read from / written to ``cache_path``."""
    from dsbench.io import atomic_path

    meta = {"network_id": extractor.network_id, "reference_id": reference.reference_id,
            "n": reference.n_images}
    if cache_path is not None and Path(cache_path).is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            cached, feats = json.loads(str(z["meta"])), z["features"]
        if cached != meta or feats.shape != (reference.n_images, extractor.dims[0]):
            raise ValueError(f"stale reference feature cache {cache_path}: made for {cached}, need {meta}; "
                             "delete it to recompute")
        return feats
    feats = np.concatenate([f.pool for f in adm_features(reference.images(batch_size), extractor, device,
                                                         batch_size, reference.resolution)])
    if cache_path is not None:
        with atomic_path(cache_path) as tmp, open(tmp, "wb") as fh:  # np.savez would append ".npz" to a name
            np.savez(fh, features=feats, meta=np.array(json.dumps(meta, sort_keys=True)))
    return feats


# ----------------------------------------------------------------------------- metrics


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ADM's pairwise squared distances max(|u|^2 - 2u.v + |v|^2, 0), (m, n)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)


def manifold_radii(x: torch.Tensor, k: int = PR_K, row_batch: int = 1000) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in ``x`` (self is the 0-th)."""
    if len(x) < k + 1:
        raise ValueError(f"k={k} manifold needs at least {k + 1} points, got {len(x)}")
    return torch.cat([_sq_dists(rows, x).kthvalue(k + 1, dim=1).values for rows in x.split(row_batch)])


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, row_batch: int) -> float:
    """Fraction of ``points`` inside at least one ball (centre, radius)."""
    inside = [(_sq_dists(rows, centres) <= radii).any(1) for rows in points.split(row_batch)]
    return torch.cat(inside).double().mean().item()


def precision_recall(gen: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, k: int = PR_K,
                     device: str | torch.device = "cpu", row_batch: int = 1000) -> tuple[float, float]:
    """ADM's k-NN precision and recall in fp32, ``row_batch`` rows at a time (ADM uses fp16: +-0.002).

    Precision: fraction of samples inside any reference ball; recall: fraction of references inside any
    sample ball. Each step holds a few row_batch x max(N_gen, N_ref) fp32 blocks (1000 x 50k: 200 MB each).
    """
    g, r = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (gen, ref))
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(g.shape)} and {tuple(r.shape)}")
    precision = _coverage(g, r, manifold_radii(r, k, row_batch), row_batch)
    recall = _coverage(r, g, manifold_radii(g, k, row_batch), row_batch)
    return precision, recall


class InceptionScore:
    """Streaming ADM Inception Score: consecutive splits of ``split_size`` in arrival order, mean of exp(KL)."""

    def __init__(self, split_size: int = IS_SPLIT_SIZE) -> None:
        self.split_size = split_size
        self.reset()

    def reset(self) -> None:
        self._part: list[np.ndarray] = []
        self._held = 0
        self._scores: list[float] = []

    def update(self, logits: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float64)
        while len(logits):
            take = logits[: self.split_size - self._held]
            self._part.append(take)
            self._held += len(take)
            logits = logits[len(take):]
            if self._held == self.split_size:
                self._close_split()

    def _close_split(self) -> None:
        z = np.concatenate(self._part)
        log_p = z - z.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        p = np.exp(log_p)
        log_marginal = np.log(p.mean(0, keepdims=True))
        self._scores.append(float(np.exp((p * (log_p - log_marginal)).sum(1).mean())))
        self._part, self._held = [], 0

    def compute(self) -> float:
        if self._held:  # ADM scores a short last split too
            self._close_split()
        if not self._scores:
            raise ValueError("Inception Score needs at least one sample")
        return float(np.mean(self._scores))


def fid_sfid(pool: FeatureStats, spatial: FeatureStats, reference: AdmReference) -> tuple[float, float]:
    """FID on pool features and sFID on spatial features against the reference's stored moments."""
    n = reference.n_stats
    return (frechet_distance(pool, (reference.mu, reference.sigma, n)),
            frechet_distance(spatial, (reference.mu_s, reference.sigma_s, n)))


def _check_count(n: int, expected_n: int | None, final: bool) -> None:
    """Fail as soon as the stream overshoots, and at its end if it fell short."""
    if expected_n is not None and (n > expected_n or (final and n < expected_n)):
        raise ValueError(f"ADM evaluation expects exactly {expected_n} samples "
                         f"(ImageNet: {ADM_N} = 50 per class x 1000), got {'' if final else 'at least '}{n}")


def adm_metrics(gen_batches: Iterable[np.ndarray], reference: AdmReference, extractor: AdmInception,
                device: str | torch.device, expected_n: int | None = None, batch_size: int = 100,
                pr_row_batch: int = 1000, ref_cache: str | Path | bool | None = True) -> dict:
    """FID, sFID, IS, precision and recall of uint8 (N,H,W,3) RGB samples, as ADM's evaluator reports them.

    ``ref_cache``: True caches the reference pool features beside the reference npz, a path caches them
    there, None/False recomputes them every time.
    """
    check_reference_network(reference, extractor)
    pool, spatial, isc, pool_feats = FeatureStats(), FeatureStats(), InceptionScore(), []
    for f in adm_features(gen_batches, extractor, device, batch_size, reference.resolution):
        pool.update(f.pool)
        spatial.update(f.spatial)
        isc.update(f.logits)
        pool_feats.append(f.pool)
        _check_count(pool.n, expected_n, final=False)
    _check_count(pool.n, expected_n, final=True)
    if pool.n < PR_K + 1:
        raise ValueError(f"need at least {PR_K + 1} samples, got {pool.n}")

    cache = default_feature_cache(reference, extractor.network_id) if ref_cache is True else ref_cache or None
    ref_feats = reference_pool_features(reference, extractor, device, batch_size, cache)
    precision, recall = precision_recall(np.concatenate(pool_feats), ref_feats, PR_K, device, pr_row_batch)
    fid, sfid = fid_sfid(pool, spatial, reference)
    return {"fid": fid, "sfid": sfid, "inception_score": isc.compute(), "precision": precision,
            "pool_features": np.concatenate(pool_feats),  # the rows FID's bootstrap interval resamples
            "recall": recall, "n_samples": pool.n, "n_ref_pr": len(ref_feats), "pr_k": PR_K,
            "network_id": extractor.network_id, "reference_id": reference.reference_id}
