"""ImageReward worker: runs inside envs/.venv-imagereward, started by metrics/external.py.

Request: {"items": [{"prompt": str, "path": PNG path}], "weights": ImageReward.pt, "med_config":
med_config.json, "device": str}. Result: {"backend", "rewards" (one per item, in order), "versions"}.
Only the stdlib is imported at the top, so the fake backend runs under any Python; our package is not
imported (it is not installed in this environment).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from worker_io import parse_args, versions, write_result  # a sibling: this runs as a script

PACKAGES = ("image-reward", "torch", "torchvision", "transformers", "timm", "huggingface-hub")


def fake_reward(prompt: str, image_bytes: bytes) -> float:
    """Deterministic stand-in in [-2, 2): the first 8 bytes of sha256(prompt, NUL, file bytes)."""
    digest = hashlib.sha256(prompt.encode("utf-8") + b"\0" + image_bytes).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * 4.0 - 2.0


def score_fake(req: dict) -> list[float]:
    return [fake_reward(it["prompt"], Path(it["path"]).read_bytes()) for it in req["items"]]


def score_real(req: dict) -> list[float]:
    import torch
    import ImageReward as RM

    # A local checkpoint and med_config: RM.load then never reaches the hub (BERT's tokenizer comes from
    # HF_HOME, offline).
    model = RM.load(req["weights"], device=req["device"], med_config=req["med_config"])
    # RM.load uses load_state_dict(strict=False): a wrong file would load nothing and score noise.
    try:
        state = torch.load(req["weights"], map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format; an old-format file is read whole
        state = torch.load(req["weights"], map_location="cpu", weights_only=True)
    missing = [n for n, _ in model.named_parameters() if n not in state]
    if missing:
        raise SystemExit(f"{req['weights']} lacks {len(missing)} of ImageReward's parameters "
                         f"(e.g. {missing[:3]}): not an ImageReward checkpoint")
    del state
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(req["items"]):
        groups.setdefault(it["prompt"], []).append(i)
    rewards: list[float] = [math.nan] * len(req["items"])
    with torch.no_grad():
        for prompt, idx in groups.items():
            r = model.score(prompt, [req["items"][i]["path"] for i in idx])
            r = r if isinstance(r, list) else [r]  # one image: inference_rank's squeeze() left a scalar
            for i, v in zip(idx, r):
                rewards[i] = float(v)
    return rewards


def main(argv: list[str] | None = None) -> int:
    a = parse_args(__doc__, argv)
    req = json.loads(Path(a.request).read_text(encoding="utf-8"))
    rewards = (score_real if a.backend == "real" else score_fake)(req)
    if len(rewards) != len(req["items"]) or not all(math.isfinite(r) for r in rewards):
        raise SystemExit(f"expected {len(req['items'])} finite rewards, got {rewards[:5]}...")
    write_result(a.result, {"backend": a.backend, "rewards": rewards, "versions": versions(PACKAGES)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
