"""Training and rendering DiffSparse schedules for a cell: the bridge between the config and
methods/diffsparse (Trainer, Schedule) that the `train-schedule` and `heatmap` verbs call."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dsbench.cell import Cell


def trained_method(cell: Cell):
    m = cell.accelerator
    if not getattr(m, "trained", False):
        raise ValueError(f"variant {cell.method!r} is method {cell.method_cfg['method']!r}: it has no schedule to train")
    return m


def train_cell(cell: Cell, out: str | Path, *, force: bool = False, progress: bool = True):
    """Train the cell's DiffSparse schedule into `out` (.safetensors + .json); resumes from `out`.ckpt."""
    import torch

    from dsbench.conditions import load_training_conditions
    from methods.diffsparse.train import Trainer

    method, out = trained_method(cell), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"schedule output must be a .safetensors file, got {out}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already holds a trained schedule; pass --force to train over it")
    s = method.settings
    dataset = cell.model_cfg.get("train_dataset", cell.model_cfg["dataset"])
    conditions = load_training_conditions(dataset, s.samples, cell.config["resources"])
    lpips_net = None
    if s.loss == "lpips":
        from metrics.networks import load_lpips

        lpips_net = load_lpips(cell.config["metrics"]["lpips_network"], cell.config["device"])
        lpips_net.requires_grad_(False)
    pipe = cell.build_pipeline()
    torch.manual_seed(s.seed)
    from dsbench.provenance import weights_id

    meta = {"model": cell.model, "variant": cell.method, "source": cell.model_cfg["source"],
            "weights_id": weights_id(cell), "train_dataset": dataset,
            "scheduler": cell.model_cfg["scheduler"], "lpips_network": getattr(lpips_net, "network_id", None),
            "command": " ".join(shlex.quote(a) for a in sys.argv)}
    trainer = Trainer(cell.adapter, pipe, method, conditions=conditions, num_steps=cell.num_steps,
                      guidance_scale=cell.model_cfg["guidance_scale"], lpips_net=lpips_net, meta=meta)
    ckpt = out.with_suffix(".ckpt")
    if method.search is not None:
        schedule = trainer.search(method.search, progress=progress)
    else:
        schedule = trainer.train(checkpoint_path=ckpt, progress=progress)
    schedule.save(out)
    ckpt.unlink(missing_ok=True)
    return schedule


def render_heatmap(cell: Cell, out: str | Path, view: str = "paper") -> Path:
    from dsbench.figures import schedule_heatmap

    method = trained_method(cell)
    schedule = method.load_schedule()
    groups = cell.adapter.groups
    kinds = groups[0].kinds if len(groups) == 1 else {g.name: g.kinds for g in groups}
    return schedule_heatmap(schedule, kinds, out, view=view)
