"""Pre-extracted latents for fine-tuning a latent-space DiT (on a GPU): the documented folder format.

A folder of safetensors shards, read in name order, each holding two tensors and nothing else:

- `latents`: (n, C, H, W), float16/bfloat16/float32, the VAE encoder's latents already multiplied by the
  VAE's scaling factor (0.18215 for sd-vae-ft-ema): exactly what the DiT denoises;
- `labels`: (n,) int64 class ids in [0, num_classes).

(fast-DiT's feature extraction writes the same content as .npy pairs; one safetensors file per few
thousand images keeps the format free of pickles.) Shapes are validated from the headers when the folder is
opened, without reading the data. Batches are deterministic: sample position p = step·batch + j is item
perm_e[p mod n] of epoch e = p // n, perm_e a seeded permutation, so a resumed run needs only its step.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import torch

FLOATS = ("F16", "BF16", "F32")


class LatentFolder:
    def __init__(self, folder: str | Path, channels: int, size: int, num_classes: int, seed: int = 0):
        from safetensors import safe_open

        self.folder, self.seed = Path(folder), seed
        files = sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{self.folder}: no *.safetensors latent shards (expected `latents` "
                                    f"(n, {channels}, {size}, {size}) and `labels` (n,) in each)")
        self.files, self.ends, labels = files, [], []
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                keys = set(fh.keys())
                if keys != {"latents", "labels"}:
                    raise ValueError(f"{f}: a latent shard holds exactly `latents` and `labels`, got {sorted(keys)}")
                lat, lab = fh.get_slice("latents"), fh.get_slice("labels")
                shape, n = tuple(lat.get_shape()), lab.get_shape()
                if lat.get_dtype() not in FLOATS or shape[1:] != (channels, size, size):
                    raise ValueError(f"{f}: latents are {lat.get_dtype()} {shape}; this model needs float "
                                     f"(n, {channels}, {size}, {size})")
                if lab.get_dtype() != "I64" or len(n) != 1 or n[0] != shape[0]:
                    raise ValueError(f"{f}: labels are {lab.get_dtype()} {tuple(n)}; expected int64 ({shape[0]},), "
                                     f"one per latent")
                labels.append(fh.get_tensor("labels"))
            self.ends.append((self.ends[-1] if self.ends else 0) + shape[0])
        self.labels = torch.cat(labels)
        self.n = len(self.labels)
        if self.n == 0:
            raise ValueError(f"{self.folder}: the latent shards hold no samples")
        bad = (self.labels < 0) | (self.labels >= num_classes)
        if bad.any():
            raise ValueError(f"{self.folder}: {int(bad.sum())} label(s) outside [0, {num_classes}), e.g. "
                             f"{int(self.labels[bad][0])}")
        self._perm: tuple[int, torch.Tensor] | None = None

    def identity(self) -> dict:
        """What the run's data is, for its fingerprint: the shards' names and sizes (not their hashes, which
        would mean reading ~20 GB for ImageNet)."""
        return {"kind": "latents", "folder": str(self.folder), "seed": self.seed, "samples": self.n,
                "files": {f.name: f.stat().st_size for f in self.files}}

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def batch(self, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents float32 (batch, C, H, W), labels (batch,)) at `step`."""
        from safetensors import safe_open

        idx = [int(self._order(p // self.n)[p % self.n]) for p in range(step * batch, (step + 1) * batch)]
        rows = []
        for i in idx:
            k = bisect.bisect_right(self.ends, i)
            start = self.ends[k - 1] if k else 0
            with safe_open(str(self.files[k]), framework="pt") as fh:
                rows.append(fh.get_slice("latents")[i - start:i - start + 1])
        return torch.cat(rows).float(), self.labels[idx]
