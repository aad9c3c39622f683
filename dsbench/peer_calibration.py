"""Calibrating a peer that needs the model's own statistics (MagCache's magnitude ratios), with the peer's
own calibration mode: diffusers' MagCache hook with `calibrate=True` computes every block nothing and
prints the per-step ratio mean(‖r_t‖ / ‖r_{t-1}‖) of the residual of the whole block stack when the run ends.
We run it on the DiffSparse training conditions (disjoint from the evaluated ones) with seeds from their own
range, read the list it prints, and write it with what it was measured on."""
from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

from dsbench.cell import Cell

CALIBRATION_SEED_OFFSET = 1_000_000  # seeds base + 1e6 + i: never a sample's (those are base + i)


def calibrate_cell(cell: Cell, out: str | Path, force: bool = False) -> dict:
    import torch

    from dsbench.conditions import load_training_conditions
    from dsbench.io import write_json
    from dsbench.provenance import provenance, weights_id
    from dsbench.samples import sample_seed
    from methods.peers.diffusers_hooks import HookRun

    method, out = cell.accelerator, Path(out)
    if not method.calibrated:
        raise ValueError(f"{cell.method} ({method.name}) needs no calibration")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already holds a calibration; pass --force to measure it again")
    cell.check_peer_family()
    n = method.config.calibration_samples
    dataset = cell.model_cfg.get("train_dataset", cell.model_cfg["dataset"])
    conditions = load_training_conditions(dataset, n, cell.config["resources"])
    seeds = [sample_seed(cell.config["seed"], CALIBRATION_SEED_OFFSET + i) for i in range(n)]
    pipe = cell.build_pipeline()
    from diffusers import hooks

    printed = io.StringIO()
    with HookRun(cell.adapter.denoiser(pipe), hooks.apply_mag_cache, method.calibration_config(cell.num_steps),
                 per_image=False) as run, torch.inference_mode(), contextlib.redirect_stdout(printed):
        run.reset()
        cell.adapter.sample(pipe, conditions, seeds, num_steps=cell.num_steps,
                            guidance_scale=cell.model_cfg["guidance_scale"])
    ratios = parse_ratios(printed.getvalue(), cell.num_steps)
    record = {"method": method.name, "variant": cell.method, "mag_ratios": ratios,
              "calibrated_for": cell.calibration_identity(weights_id(cell)),
              "conditions": {"dataset": dataset, "count": n, "seeds": seeds}, "provenance": provenance(cell)}
    write_json(out, record)
    return record


def parse_ratios(text: str, num_steps: int) -> list[float]:
    """The lists diffusers' MagCache prints after "Calibration Complete", one ratio per step. A model whose
    pipeline calls the denoiser once per CFG branch (Wan) keeps one state per branch and prints one list
    each; the hook then applies one list to both, so their mean is kept."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if "Calibration Complete" in line:
            tail = [t for t in lines[i + 1:] if t.strip()]
            ratios = ast.literal_eval(tail[0].strip()) if tail else None
            if not (isinstance(ratios, list) and len(ratios) == num_steps
                    and all(isinstance(v, float) for v in ratios)):
                raise RuntimeError(f"MagCache's calibration printed {tail[:1]!r}, not {num_steps} ratios")
            found.append(ratios)
    if not found:
        raise RuntimeError("diffusers' MagCache printed no calibration (its calibration mode changed?)")
    return [sum(col) / len(found) for col in zip(*found)]
