"""MACs counted while sampling runs, in two conventions.

`torch.utils.flop_counter.FlopCounterMode` is wrapped around every call of the denoiser (not the text
encoder or the VAE, which every method shares). Per call we split its count by aten op:
- linear and conv layers (`mm`, `addmm`, `convolution`): the paper's convention, `macs_c1`, taken per
  image and per CFG branch, i.e. divided by the rows of the denoiser batch;
- everything the counter sees (attention matmuls included), per image with the CFG rows included:
  `macs_total`.
On the meta device SDPA decomposes into counted matmuls; on a CPU with real tensors the fused SDPA
kernel is invisible to the counter, so the math backend is forced while counting
(shared/reference/diffusers-internals.md §3).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch.utils.flop_counter import FlopCounterMode

LINEAR_CONV_OPS = {"mm", "addmm", "convolution", "_convolution"}
_HOOK = "dsbench_mac_counter"


def _op_name(op) -> str:
    return getattr(op, "__name__", str(op)).split(".")[0]


@dataclass
class MacTally:
    calls: int = 0
    c1_per_row: float = 0.0      # Σ over calls of linear/conv MACs ÷ batch rows
    total: float = 0.0           # Σ over calls of all counted MACs
    per_op: dict[str, float] = field(default_factory=dict)

    def add(self, counts: dict, rows: int) -> None:
        self.calls += 1
        for op, flops in counts.items():
            name = _op_name(op)
            macs = flops / 2
            self.per_op[name] = self.per_op.get(name, 0.0) + macs
            self.total += macs
            if name in LINEAR_CONV_OPS:
                self.c1_per_row += macs / rows

    def per_image(self, images: int) -> dict[str, float]:
        # c1 is already per batch row (one image, one CFG branch); total is per image, CFG rows included.
        return {"macs_c1": self.c1_per_row, "macs_total": self.total / images,
                "denoiser_calls": self.calls}


class _CountingHook(ModelHook):
    def __init__(self, tally: MacTally):
        super().__init__()
        self.tally = tally

    def new_forward(self, module, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        math_sdpa = (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
                     if hidden.device.type == "cpu" else contextlib.nullcontext())
        with FlopCounterMode(display=False) as counter, math_sdpa:
            out = self.fn_ref.original_forward(*args, **kwargs)
        self.tally.add(counter.get_flop_counts()["Global"], rows=hidden.shape[0])
        return out


@contextlib.contextmanager
def count_macs(denoiser: torch.nn.Module):
    """Context in which every denoiser call is counted; yields the running MacTally."""
    tally = MacTally()
    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    registry.register_hook(_CountingHook(tally), _HOOK)
    try:
        yield tally
    finally:
        registry.remove_hook(_HOOK, recurse=False)
