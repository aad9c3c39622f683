"""Streaming ImageReward (paper Table 9: FLUX.1-schnell on PartiPrompts), scored in its own environment.

``update`` writes each image as a PNG (by sample index, never by prompt text) and records its prompt;
``compute`` runs metrics/workers/imagereward_worker.py once, inside envs/.venv-imagereward, and returns
the mean reward. The model applies its own preprocessing (BLIP ViT-L, 224 px bicubic), so PNGs of the
generated images go in as they are.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dsbench.datasets import PARTIPROMPTS_COUNT
from dsbench.io import atomic_path
from metrics.external import run_worker
from metrics.images import check_uint8_rgb

HF_REPO = "THUDM/ImageReward"
WEIGHT_FILES = ("ImageReward.pt", "med_config.json")
TOKENIZER_REPO = "bert-base-uncased"  # BLIP's tokenizer, read from the Hugging Face cache


def encode_png(image: np.ndarray) -> bytes:
    """The exact bytes ``update`` writes for one (H, W, 3) uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def hf_hub_dir(hf_home: str | Path | None = None) -> Path:
    if hf_home is not None:
        return Path(hf_home) / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def required_files(weights_dir: str | Path, hf_home: str | Path | None = None) -> list[tuple[Path, str]]:
    """(path, how to get it) of everything the real backend reads; for the check and `dsbench doctor`."""
    wdir = Path(weights_dir)
    files = [(wdir / f, f"hf download {HF_REPO} {f} --local-dir {wdir}") for f in WEIGHT_FILES]
    tok = hf_hub_dir(hf_home) / f"models--{TOKENIZER_REPO}"
    files.append((tok, f"hf download {TOKENIZER_REPO} vocab.txt tokenizer_config.json config.json"
                       + (f" (with HF_HOME={hf_home})" if hf_home is not None else "")))
    return files


def check_files(weights_dir: str | Path | None, hf_home: str | Path | None = None) -> None:
    if weights_dir is None:
        raise FileNotFoundError(f"ImageReward needs a weights_dir holding {' and '.join(WEIGHT_FILES)} "
                                f"(hf download {HF_REPO} {' '.join(WEIGHT_FILES)} --local-dir <dir>)")
    for path, how in required_files(weights_dir, hf_home):
        if not path.exists():
            raise FileNotFoundError(f"ImageReward file not found: {path}. Get it with `{how}`.")


class ImageRewardScore:
    """update(images uint8 (N,H,W,3), prompts) ... compute() -> mean reward, n, per-prompt means.

    backend "real" checks ``weights_dir`` (ImageReward.pt, med_config.json) and the BERT tokenizer in the
    Hugging Face cache at construction, before any GPU work; "fake" is the worker's deterministic stand-in.
    ``expected_n``: the exact sample count (PartiPrompts: 1632 × k), each prompt the same number of times.
    ``workdir`` keeps PNGs, request, result and worker logs; by default a temporary folder, removed by reset.
    """

    def __init__(self, *, backend: str = "real", weights_dir: str | Path | None = None, device: str = "cuda",
                 workdir: str | Path | None = None, expected_n: int | None = None,
                 python: str | Path | None = None, envs_root: str | Path | None = None,
                 hf_home: str | Path | None = None, timeout: float | None = None) -> None:
        if backend == "real":
            check_files(weights_dir, hf_home)
        self.backend, self.device, self.expected_n = backend, device, expected_n
        self.weights_dir = Path(weights_dir).resolve() if weights_dir is not None else None
        self.run_kw = dict(backend=backend, python=python, envs_root=envs_root, hf_home=hf_home, timeout=timeout)
        self._own_workdir, self._tmp = workdir is None, None
        self.workdir = Path(workdir) if workdir is not None else None
        self.reset()

    def reset(self) -> None:
        if self._own_workdir:  # a TemporaryDirectory also goes when the metric is garbage-collected
            if self._tmp is not None:
                self._tmp.cleanup()
            self._tmp = tempfile.TemporaryDirectory(prefix="imagereward-")
            self.workdir = Path(self._tmp.name)
        self.items: list[dict] = []

    @property
    def n(self) -> int:
        return len(self.items)

    def update(self, images: np.ndarray, prompts: Sequence[str]) -> None:
        check_uint8_rgb(images, "ImageReward images")
        if isinstance(prompts, str) or len(prompts) != len(images):
            raise ValueError(f"need one prompt per image: {len(images)} images, "
                             f"{1 if isinstance(prompts, str) else len(prompts)} prompts")
        folder = self.workdir.resolve() / "images"
        for image, prompt in zip(images, prompts):
            path = folder / f"{self.n:06d}.png"
            with atomic_path(path) as tmp:
                tmp.write_bytes(encode_png(image))
            self.items.append({"prompt": str(prompt), "path": str(path)})

    def _check_counts(self) -> None:
        if self.n == 0:
            raise ValueError("ImageRewardScore.compute() called before any update()")
        if self.expected_n is None:
            return
        if self.n != self.expected_n:
            raise ValueError(f"ImageReward expects {self.expected_n} samples (PartiPrompts: "
                             f"{PARTIPROMPTS_COUNT} × k), got {self.n}")
        counts = defaultdict(int)
        for it in self.items:
            counts[it["prompt"]] += 1
        if len(set(counts.values())) != 1:
            lo, hi = min(counts, key=counts.get), max(counts, key=counts.get)
            raise ValueError(f"every prompt needs the same number of images: {counts[lo]} for {lo!r}, "
                             f"{counts[hi]} for {hi!r}")

    def compute(self) -> dict:
        self._check_counts()
        request = {"items": self.items, "device": self.device}
        if self.weights_dir is not None:
            request.update(weights=str(self.weights_dir / WEIGHT_FILES[0]),
                           med_config=str(self.weights_dir / WEIGHT_FILES[1]))
        res = run_worker("imagereward", request, self.workdir, **self.run_kw)
        rewards = [float(r) for r in res["rewards"]]
        if len(rewards) != self.n or not all(math.isfinite(r) for r in rewards):
            raise ValueError(f"the ImageReward worker returned {len(rewards)} rewards for {self.n} images")
        per_prompt = defaultdict(list)
        for it, r in zip(self.items, rewards):
            per_prompt[it["prompt"]].append(r)
        return {"image_reward": sum(rewards) / len(rewards), "n": self.n, "n_prompts": len(per_prompt),
                "per_prompt": {p: sum(v) / len(v) for p, v in per_prompt.items()}, "rewards": rewards,
                "backend": res["backend"], "versions": res.get("versions", {})}
