"""Which steps compute fully, shared by the caching methods.

Two ways of counting steps appear in the official code, and each method keeps its own:
- a *clock*: the step index of the model's own sampler loop, which counts up (PixArt's DPM-Solver,
  the flow samplers of Wan and FLUX) or down (DiT's DDIM and DDPM loops, from S − 1 to 0). The direction
  is a property of the sampler (`Layout.clock`, set by the model adapter); FORA, ToCa and DuCa test it.
- a *counter* in sampling order (TaylorSeer) or the position in the scheduler's timesteps (DeepCache),
  which do not depend on the direction.
"""
from __future__ import annotations

import numpy as np

CLOCKS = ("up", "down")
CONSTANTS = ("pixart", "dit", "flux")   # the official ToCa/DuCa codes' formulas, one set per code base


def clock(step: int, num_steps: int, direction: str) -> int:
    """The official code's index of sampling step `step` (0 = the first step sampled)."""
    if direction not in CLOCKS:
        raise ValueError(f"unknown step clock {direction!r}; one of {CLOCKS}")
    return step if direction == "up" else num_steps - 1 - step


def periodic_steps(num_steps: int, interval: int, direction: str) -> list[int]:
    """FORA's full steps: the first step sampled, and every step whose clock is a multiple of N.
    On DiT's DDIM-50 countdown with N = 3 that is s = 0 and s ≡ 1 (mod 3): 18 steps, not 17."""
    return [s for s in range(num_steps) if s == 0 or clock(s, num_steps, direction) % interval == 0]


def interval_steps(num_steps: int, interval: int, warmup: int = 1) -> list[int]:
    """Full during the first `warmup` steps, then every `interval`-th step, in sampling order
    (TaylorSeer's counter rule; with warmup 1 this is DeepCache's (i − i₀) mod N == 0 on the position in
    the scheduler's timesteps)."""
    full, counter = [], 0
    for s in range(num_steps):
        if s < warmup:
            full.append(s)
        elif counter == interval - 1:
            full.append(s)
            counter = 0
        else:
            counter += 1
    return full


def toca_period(threshold: int, step: int, num_steps: int, constants: str, direction: str) -> int:
    """ToCa's refresh period T at a full step, with c the clock. `pixart`: T = round(N / (0.8 + 0.4 c/S));
    `dit`: T = round(N / (1.4 − 0.8 c/S)), and T = 2 while c is in range(int(0.2 S), int(0.4 S)) (the
    official test: at S = 12 that is c ∈ {2, 3}). As the official code, the factor is formed in Python
    floats, then T = torch.round(N / factor) in float32 (half to even): at S = 12, c = 11 the factor is
    2/3 and N / factor is 4.4999998 in float32, so T = 4 (double precision would give 4.5000000001 → 5)."""
    c = clock(step, num_steps, direction)
    if constants == "flux":  # the FLUX code's period does not move with the step
        return threshold
    if constants == "pixart":
        weight = 0.2
        factor = 1 - weight + 2 * weight * c / num_steps
    else:
        if c in range(int(num_steps * 0.2), int(num_steps * 0.4)):
            return 2
        weight = 0.4
        factor = 1 + weight - 2 * weight * c / num_steps
    return max(1, int(np.round(np.float32(threshold) / np.float32(factor))))


def toca_full_steps(threshold: int, num_steps: int, constants: str, direction: str,
                    quirk: bool = False) -> dict[int, str]:
    """{step: "all" | "first"} for the full steps: the first step, then steps whose clock is a multiple
    of T. One decision per step (evaluated at layer 0) unless `quirk`: then, at a full step where T
    changes, the official code refreshes only layer 0 ("first") and the other layers test the new T."""
    full, period = {0: "all"}, toca_period(threshold, 0, num_steps, constants, direction)
    for s in range(1, num_steps):
        c = clock(s, num_steps, direction)
        if c % period:
            continue
        new = toca_period(threshold, s, num_steps, constants, direction)
        full[s] = "first" if quirk and c % new else "all"
        period = new
    return full


def toca_fresh_ratio(base: float, step: int, layer: int, layers: int, kind: str, num_steps: int,
                     constants: str, direction: str, group_factor: float = 1.0) -> float:
    """ToCa's fresh ratio r(step, layer, module), clamped to [0, 1]. `pixart` ('ToCa'):
    R·(1.9 − 1.8 c/S)·(1.6 − 1.2 l/(L−1))·m, m = 0 / 0.6 / 1.6 for self-attn / cross-attn / MLP;
    `dit` ('ToCa-ddim50'): R·(3 − 4 c/S)·(0.8 + 0.4 l/(L−1))·m, m = 0 / 0 / 2.5;
    `flux` (its FLUX code): R·(1.5 − l/27) on the MLP branches, l the layer within its stream (27 is
    that code's constant, not FLUX's depth), attention 0; its stream factor is `group_factor`, applied before
    the clamp as that code does."""
    depth = layer / max(layers - 1, 1)
    c = clock(step, num_steps, direction)
    if constants == "flux":
        return min(1.0, max(0.0, base * (1.5 - layer / 27) * (1.0 if kind == "mlp" else 0.0) * group_factor))
    if constants == "pixart":
        factor = (1.9 - 1.8 * c / num_steps) * (1.6 - 1.2 * depth)
        module = {"self_attn": 0.0, "cross_attn": 0.6, "mlp": 1.6}[kind]
    else:
        factor = (3 - 4 * c / num_steps) * (0.8 + 0.4 * depth)
        module = {"self_attn": 0.0, "cross_attn": 0.0, "mlp": 2.5}[kind]
    return min(1.0, max(0.0, base * factor * module * group_factor))
