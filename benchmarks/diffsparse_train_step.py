"""One DiffSparse training iteration: wall time and activation memory, with and without per-step
activation checkpointing. Teacher sampling (no grad) + student sampling through the gated engine + LPIPS + backward.

    python benchmarks/diffsparse_train_step.py                                   # CPU: mid_pixart, random weights
    python benchmarks/diffsparse_train_step.py --model pixart_alpha_256 --device cuda   # full size (GPU)
    python benchmarks/diffsparse_train_step.py --model wan21_t2v_1_3b --device cuda --dtype bfloat16

Memory is the bytes autograd saves for the backward pass (torch.autograd.graph.saved_tensors_hooks,
each storage counted once): the same on any device, and on CUDA also torch.cuda.max_memory_allocated.
The LPIPS network is AlexNet-LPIPS with seeded random weights (same cost as the real one, no download).
"""
from __future__ import annotations

import argparse
import time

import torch

from methods import make_method
from methods.diffsparse.train import Trainer
from metrics.networks import load_lpips
from models import get_adapter


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    def __init__(self):
        self.seen, self.bytes = set(), 0

        def pack(t):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in self.seen:
                self.seen.add(key)
                self.bytes += t.untyped_storage().nbytes()
            return t
        super().__init__(pack, lambda t: t)


def one_iteration(trainer: Trainer, conds, seeds, device) -> tuple[float, int, int]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    saved = SavedBytes()
    with trainer.engine:   # the backward pass re-runs checkpointed steps through the engine's hooks
        with saved:
            loss, _ = trainer.loss(conds, seeds, stage=2)
        loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else -1
    return time.perf_counter() - t, saved.bytes, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mid_pixart")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    adapter = get_adapter(args.model)
    source = "tiny" if adapter.preset.is_tiny else "random"
    scheduler = {"pixart": "dpm_solver_pp", "dit": "ddim", "wan": "unipc_flow"}[adapter.family]
    pipe = adapter.build(source, device=args.device, dtype=getattr(torch, args.dtype), scheduler=scheduler)
    lpips_net = load_lpips("tiny", args.device).requires_grad_(False)
    conds = [0] * args.batch if adapter.family == "dit" else ["a photo"] * args.batch
    print(f"{args.model} ({source} weights) on {args.device}, {args.steps} steps, batch {args.batch}, {args.dtype}")
    results = {}
    for ckpt in (False, True):
        m = make_method("diffsparse", ratio=0.43, train={"batch_size": args.batch, "samples": args.batch,
                                                        "checkpoint": ckpt})
        tr = Trainer(adapter, pipe, m, conditions=conds, num_steps=args.steps, guidance_scale=4.5,
                     lpips_net=lpips_net)
        tr.initialise()
        one_iteration(tr, conds, [0] * args.batch, args.device)          # warm-up
        results[ckpt] = one_iteration(tr, conds, [1] * args.batch, args.device)
        sec, saved, peak = results[ckpt]
        print(f"checkpoint={ckpt!s:<5} {sec:7.2f} s/iteration, saved activations {saved / 2**20:9.1f} MiB"
              + (f", peak CUDA memory {peak / 2**30:.2f} GiB" if peak >= 0 else ""))
    (t0, m0, _), (t1, m1, _) = results[False], results[True]
    # With checkpointing each step's snapshot also keeps the caches it reads (one output per sub-layer).
    h, w = adapter.token_grid()
    cfg = pipe.transformer.config
    rows = args.batch * adapter.cfg_branches(4.5)
    caches = (args.steps - 1) * len(tr.layout.sublayers) * tr.layout.blocks * rows * h * w \
        * cfg.num_attention_heads * cfg.attention_head_dim * torch.finfo(getattr(torch, args.dtype)).bits // 8
    print(f"checkpointing: {m1 / m0:.3f}x the saved activations for {t1 / t0:.2f}x the time; the snapshots "
          f"also hold the steps' caches, {caches / 2**20:.1f} MiB, so memory is {(m1 + caches) / m0:.3f}x")


if __name__ == "__main__":
    main()
