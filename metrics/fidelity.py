"""Fidelity of accelerated samples to the unaccelerated model's samples, paired by index.

PSNR, SSIM and LPIPS are computed per pair and averaged over pairs (mean of per-pair PSNR,
not PSNR of the mean MSE). Identical pairs would have PSNR = inf, which makes the mean
useless, so per-pair PSNR is capped at PSNR_CAP_DB = 100 dB (an MSE of ~6.5e-6 grey
levels^2: far below one-level differences, which give 48.13 dB).
"""
from __future__ import annotations

import numpy as np
import torch

from metrics.images import check_uint8_rgb

PSNR_CAP_DB = 100.0


def psnr_per_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per pair, data range 255, capped at PSNR_CAP_DB."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0 ** 2 / mse)
    return np.minimum(psnr, PSNR_CAP_DB)


def ssim_per_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per pair with torchmetrics' defaults (Gaussian 11 x 11, sigma 1.5, K = 0.01 / 0.03, the
    Wang et al. 2004 recipe), data range 255, averaged over the three channels and the image."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    x, y = (torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b))
    return ssim(x, y, data_range=255.0, reduction="none").numpy()


def _to_lpips_input(x: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    # lpips/torchmetrics only check min >= -1, so [0,255] input would pass silently.
    assert t.min() >= -1.0 and t.max() <= 1.0, "LPIPS input must lie in [-1, 1]"
    return t.to(device)


class Fidelity:
    """``update(a, b)`` with uint8 (N,H,W,3) pairs; ``compute()`` -> {"psnr", "ssim", "lpips", "n"}.

    ``lpips_net`` (from ``networks.load_lpips``) may be None for PSNR only ("lpips": None).
    ``per_pair()`` -> the per-pair values behind the means, for their bootstrap intervals.
    """

    def __init__(self, lpips_net=None, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        self.lpips_net, self.device, self.batch_size = lpips_net, torch.device(device), batch_size
        self.reset()

    def reset(self) -> None:
        self.n, self._psnr, self._ssim, self._lpips = 0, 0.0, 0.0, 0.0
        self._pairs: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "lpips": []}

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        check_uint8_rgb(a, "a")
        check_uint8_rgb(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"paired images must have the same shape: {a.shape} vs {b.shape}")
        psnr = psnr_per_pair(a, b)
        self._psnr += float(psnr.sum())
        self._pairs["psnr"].append(psnr)
        for i in range(0, len(a), self.batch_size):  # bound memory at high resolution
            sl = slice(i, i + self.batch_size)
            ssim = ssim_per_pair(a[sl], b[sl])
            self._ssim += float(ssim.sum())
            self._pairs["ssim"].append(np.asarray(ssim, dtype=np.float64).reshape(-1))
            if self.lpips_net is not None:
                with torch.no_grad():
                    d = self.lpips_net(_to_lpips_input(a[sl], self.device),
                                       _to_lpips_input(b[sl], self.device))
                self._lpips += float(d.double().sum())
                self._pairs["lpips"].append(d.double().reshape(-1).cpu().numpy())
        self.n += len(a)

    def per_pair(self) -> dict[str, np.ndarray | None]:
        """Per-pair PSNR, SSIM and LPIPS (None without an LPIPS network), in update order."""
        return {k: np.concatenate(v) if v else None for k, v in self._pairs.items()}

    def compute(self) -> dict:
        if self.n == 0:
            raise ValueError("Fidelity.compute() called before any update()")
        return {"psnr": self._psnr / self.n, "ssim": self._ssim / self.n,
                "lpips": self._lpips / self.n if self.lpips_net is not None else None,
                "n": self.n}
