"""Quality metrics of one video cell (Table 3): VBench on its videos, and fidelity to `none` frame by frame."""
from __future__ import annotations

from pathlib import Path

from dsbench.cell import Cell
from dsbench.samples import iter_images
from models.registry import get_preset


def vbench_settings(config: dict, dataset: str) -> dict:
    """evaluate_vbench's keyword arguments from the config: backend, interpreter, model cache, suite size."""
    from metrics.external import configured_python
    from metrics.vbench import FULL_INFO_ENTRIES, check_dimensions

    vb = config["metrics"].get("vbench", {})
    return {"dimensions": check_dimensions(vb.get("dimensions")), "backend": vb.get("backend", "real"),
            "python": configured_python("vbench", vb.get("python")),
            "cache": Path(config["resources"]) / "weights" / "vbench",
            "expected_entries": FULL_INFO_ENTRIES if dataset == "vbench" else None}


def evaluate_video(cell: Cell, samples_root: str | Path = "results") -> dict:
    from dsbench.conditions import VBENCH_DATASETS, dataset_path, vbench_videos
    from dsbench.evaluate import bootstrap_settings, check_samples, device_for, interval_settings
    from metrics.bootstrap import mean_half_width
    from dsbench.videos import export_videos
    from metrics.fidelity import Fidelity
    from metrics.networks import load_lpips
    from metrics.vbench import check_files, evaluate_vbench

    config, dataset, n = cell.config, cell.model_cfg["dataset"], cell.num_samples
    if dataset not in VBENCH_DATASETS:
        raise ValueError(f"{cell.model} makes videos: its dataset must be a VBench suite (vbench, vbench_tiny), "
                         f"not {dataset!r}")
    # Samples, suite, scorer files and networks are checked before any video is written.
    check_samples(cell, samples_root)
    names = [name for _, _, name in vbench_videos(dataset, n, config["resources"])]
    settings, dev, boot = vbench_settings(config, dataset), device_for(config), bootstrap_settings(config)
    if settings["backend"] == "real":
        check_files(settings["dimensions"], settings["cache"])
    lpips_net = load_lpips(config["metrics"]["lpips_network"], dev) if config["fidelity_samples"] else None

    root, shard = Path(samples_root), config["shard_size"]
    folder = root / "samples" / cell.model / cell.method
    videos = export_videos(folder, n, shard, names, root / "videos" / cell.model / cell.method,
                           fps=get_preset(cell.model).fps)
    r = evaluate_vbench(videos, dataset_path(dataset, config["resources"]),
                        root / "vbench" / cell.model / cell.method, device=str(dev), **settings)
    pct = lambda v: None if v is None else 100 * v  # noqa: E731  (the leaderboard's percent scale)
    out = {"model": cell.model, "method": cell.method, "n_samples": n,
           "vbench": pct(r["total"]), "vbench_quality": pct(r["quality"]), "vbench_semantic": pct(r["semantic"]),
           "vbench_available": {k: pct(v) for k, v in r["available"].items()},
           "vbench_raw": r["raw"], "vbench_missing": r["missing"], "vbench_unavailable": r["unavailable"],
           "vbench_backend": r["backend"], "vbench_versions": r["versions"]}

    # Every frame is an image: PSNR / SSIM / LPIPS over the frames of the first videos, as many frames as
    # fidelity_samples asks for images (at least one video).
    k = min(-(-config["fidelity_samples"] // get_preset(cell.model).frames), n)
    if k:
        fid_ = Fidelity(lpips_net, dev)
        base = root / "samples" / cell.model / "none"
        for a, b in zip(iter_images(folder, n, shard, limit=k), iter_images(base, n, shard, limit=k)):
            fid_.update(a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:]))
        f = fid_.compute()
        out |= {"psnr": f["psnr"], "ssim": f["ssim"], "lpips": f["lpips"], "fidelity_n": f["n"]}
        # A video's frames are not independent samples: the intervals resample whole videos (frame means).
        frames = get_preset(cell.model).frames
        out |= {f"{key}_ci": None if v is None else mean_half_width(v.reshape(-1, frames).mean(axis=1), boot)
                for key, v in fid_.per_pair().items()}
    return out | interval_settings(boot)
