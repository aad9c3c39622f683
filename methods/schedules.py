"""Which steps compute fully, shared by the caching methods (written from baselines-spec.md §2–§5)."""
from __future__ import annotations


def interval_steps(num_steps: int, interval: int, warmup: int = 1) -> list[int]:
    """Full during the first `warmup` steps, then every `interval`-th step (TaylorSeer's counter rule;
    with warmup 1 this is FORA's / DeepCache's s mod N == 0)."""
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


def _clock(step: int, num_steps: int, schedule: str) -> int:
    """The step index the official code tests: counting up (PixArt's DPM-Solver) or down (DiT's DDIM)."""
    return step if schedule == "pixart" else num_steps - 1 - step


def toca_period(threshold: int, step: int, num_steps: int, schedule: str) -> int:
    """ToCa's refresh period T at a full step. `pixart`: T = round(N / (0.8 + 0.4 c/S)); `dit`:
    T = round(N / (1.4 - 0.8 c/S)), and T = 2 while c is in [0.2 S, 0.4 S); c is the clock above.
    torch.round's half-to-even is Python's round."""
    c = _clock(step, num_steps, schedule)
    if schedule == "pixart":
        return max(1, round(threshold / (0.8 + 0.4 * c / num_steps)))
    if 0.2 * num_steps <= c < 0.4 * num_steps:
        return 2
    return max(1, round(threshold / (1.4 - 0.8 * c / num_steps)))


def toca_full_steps(threshold: int, num_steps: int, schedule: str, quirk: bool = False) -> dict[int, str]:
    """{step: "all" | "first"} for the full steps: the first step, then steps whose clock is a multiple
    of T. One decision per step (evaluated at layer 0) unless `quirk`: then, at a full step where T
    changes, the official code refreshes only layer 0 ("first") and the other layers test the new T."""
    full, period = {0: "all"}, toca_period(threshold, 0, num_steps, schedule)
    for s in range(1, num_steps):
        c = _clock(s, num_steps, schedule)
        if c % period:
            continue
        new = toca_period(threshold, s, num_steps, schedule)
        full[s] = "first" if quirk and c % new else "all"
        period = new
    return full


def toca_fresh_ratio(base: float, step: int, layer: int, layers: int, kind: str, num_steps: int,
                     schedule: str) -> float:
    """ToCa's fresh ratio r(step, layer, module), clamped to [0, 1] (baselines-spec §2.2)."""
    depth = layer / max(layers - 1, 1)
    if schedule == "pixart":
        factor = (1.9 - 1.8 * step / num_steps) * (1.6 - 1.2 * depth)
        module = {"self_attn": 0.0, "cross_attn": 0.6, "mlp": 1.6}[kind]
    else:
        c = _clock(step, num_steps, schedule)
        factor = (3 - 4 * c / num_steps) * (0.8 + 0.4 * depth)
        module = {"self_attn": 0.0, "cross_attn": 0.0, "mlp": 2.5}[kind]
    return min(1.0, max(0.0, base * factor * module))
