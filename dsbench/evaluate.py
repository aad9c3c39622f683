"""Quality metrics of one cell, streamed over its shards: FID, CLIP, and fidelity (PSNR, LPIPS) to `none`."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from dsbench.cell import Cell
from dsbench.samples import (StaleShardError, check_cell, identity_difference, iter_images, read_shard, sample_seed,
                             with_progress,
                             shard_path, shard_ranges)
from models.registry import get_preset

WEIGHT_FILES = {  # network name -> file under resources/weights
    "ViT-L-14-quickgelu": "open_clip_vit_l14_openai.bin",
}
ADM_REFERENCES = ("imagenet_adm", "shapes_adm")  # reference kinds scored by the ADM suite (metrics/adm.py)
TOCA_CLIP_DIRS = {  # network name -> folder under resources/weights (toca_compat, transformers format)
    "ViT-L-14-quickgelu": "clip-vit-large-patch14",
}


def weights_dir(config: dict) -> Path:
    return Path(config["resources"]) / "weights"


def device_for(config: dict) -> str:
    """The configured device; a CUDA device this machine lacks is an error, not a silent move to the CPU."""
    from dsbench.cell import check_device

    check_device(config["device"])
    return config["device"]


def _fid_network(config: dict):
    from metrics.networks import load_fid_network

    m = config["metrics"]
    return load_fid_network(m["fid_network"], weights_dir(config), device_for(config), m.get("fid_mode", "clean"))


def evaluate(cell: Cell, samples_root: str | Path = "results", reference: str | Path | None = None) -> dict:
    """FID against the reference statistics, CLIP (text models), PSNR/LPIPS against `none`'s samples;
    video models: VBench and fidelity (dsbench/evaluate_video.py)."""
    if get_preset(cell.model).is_video:
        from dsbench.evaluate_video import evaluate_video

        return evaluate_video(cell, samples_root)
    from metrics.bootstrap import fid_half_width, mean_half_width
    from metrics.fid import FeatureStats, check_compatible, frechet_distance, image_features
    from metrics.fidelity import Fidelity

    config, res = cell.config, get_preset(cell.model).resolution
    with_fid = cell.model_cfg.get("reference") != "none"   # Table 9: ImageReward and CLIP, no FID
    reference = Path(reference or Path(samples_root) / "reference" / f"{cell.model}.npz")
    if with_fid and not reference.is_file():
        raise FileNotFoundError(f"reference statistics {reference} are missing; build them with "
                                f"`dsbench reference --model {cell.model}` (or the workflow's reference rule)")
    check_samples(cell, samples_root)
    from metrics.networks import load_lpips
    from metrics.shapes_classifier import load_shapes_classifier

    dev, m, boot = device_for(config), config["metrics"], bootstrap_settings(config)
    text = cell.adapter.family != "dit" and m["clip_network"] != "none"
    # Every network and reference is loaded (a missing file is an error) before any feature work.
    adm = _adm(cell, reference) if cell.model_cfg.get("reference") in ADM_REFERENCES else None
    if adm is None and with_fid:
        ref, fid_net = FeatureStats.load(reference), _fid_network(config)
        check_compatible(ref[3], res, fid_net)
        check_reference_identity(cell, reference, ref[3])
    clip_scores = _clip_scores(m, weights_dir(config), dev) if text else {}
    reward = _image_reward(config, cell.num_samples if cell.model_cfg["dataset"] == "partiprompts" else None, dev) \
        if m.get("image_reward") and cell.adapter.family != "dit" else None
    lpips_net = load_lpips(m["lpips_network"], dev) if config["fidelity_samples"] else None
    align = None
    if m.get("alignment", "none") == "shapes":
        from metrics.shapes_classifier import Alignment
        from models.proxy import proxy_dir

        align = Alignment(load_shapes_classifier(proxy_dir("shapes_classifier"), dev), dev)

    n, shard = cell.num_samples, config["shard_size"]
    folder = Path(samples_root) / "samples" / cell.model / cell.method
    out = {"model": cell.model, "method": cell.method}
    if adm is not None:  # Table 2: ADM's suite against its reference batch (P/R reference features cached)
        from metrics.adm import adm_metrics

        adm_ref, extractor = adm
        own = cell.model_cfg["reference"] == "shapes_adm"  # the batch itself (small): no P/R feature cache
        expected = None if cell.model_cfg.get("allow_partial") else n
        batches = with_progress(iter_images(folder, n, shard), n, f"evaluate {cell.method}: ADM suite")
        r = adm_metrics(batches, adm_ref, extractor, dev, expected_n=expected,
                        ref_cache=None if own else reference)
        out |= {k: r[k] for k in ("fid", "sfid", "inception_score", "precision", "recall", "n_samples", "n_ref_pr")}
        out["fid_ci"] = fid_half_width(r["pool_features"], adm_ref.mu, adm_ref.sigma, boot, dev)
        out |= {"fid_n_ref": adm_ref.n_stats if own else "adm-stats", "fid_network": r["network_id"],
                "adm_reference": r["reference_id"]}
    elif with_fid:
        stats, rows = FeatureStats(), []
        batches = with_progress(iter_images(folder, n, shard), n, f"evaluate {cell.method}: FID features")
        for f in image_features(batches, fid_net, dev, resolution=res):
            stats.update(f)
            rows.append(f.astype(np.float32))  # n x D: 50k Inception rows are 0.4 GB
        out |= {"n_samples": stats.n, "fid": frechet_distance(stats, ref), "fid_n_ref": ref[2],
                "fid_network": fid_net.network_id}
        out["fid_ci"] = fid_half_width(np.concatenate(rows), ref[0], ref[1], boot, dev)

    if clip_scores or align or reward:
        conds = cell.conditions()
        for k, rng in enumerate(shard_ranges(n, shard)):
            images, batch_conds = read_shard(shard_path(folder, k), rng).images, [conds[i] for i in rng]
            for metric in (*clip_scores.values(), align, reward):
                if metric is not None:
                    metric.update(images, batch_conds)
        if "correct" in clip_scores:
            out |= {"clip": clip_scores["correct"].compute(), "clip_x100": clip_scores["correct"].x100(),
                    "clip_network": clip_scores["correct"].bundle.network_id}
        if "toca_compat" in clip_scores:
            out |= {"clip_toca": clip_scores["toca_compat"].compute()}
        if align:
            out |= {"align": align.compute(), "align_ci": mean_half_width(align.per_sample, boot)}
        if reward:  # through its own environment (metrics/external.py)
            r = reward.compute()
            out |= {"image_reward": r["image_reward"], "image_reward_backend": r["backend"]}

    k = min(config["fidelity_samples"], n)
    if k:
        base = Path(samples_root) / "samples" / cell.model / "none"
        fid_ = Fidelity(lpips_net, dev)
        ours = with_progress(iter_images(folder, n, shard, limit=k), k, f"evaluate {cell.method}: fidelity to none")
        for a, b in zip(ours, iter_images(base, n, shard, limit=k)):
            fid_.update(a, b)
        fidelity = fid_.compute()
        out |= {"psnr": fidelity["psnr"], "ssim": fidelity["ssim"], "lpips": fidelity["lpips"],
                "fidelity_n": fidelity["n"]} | fidelity_intervals(fid_, boot)
    return out | interval_settings(boot)


def bootstrap_settings(config: dict):
    from metrics.bootstrap import BootstrapSettings

    return BootstrapSettings.of(config["metrics"].get("bootstrap"))


def interval_settings(boot) -> dict:
    """What the metrics JSON's `*_ci` half-widths mean."""
    return {"ci_level": boot.level, "ci_resamples": boot.resamples, "ci_fid_resamples": boot.fid_resamples,
            "ci_seed": boot.seed}


def fidelity_intervals(fidelity, boot) -> dict:
    """Bootstrap half-widths of the fidelity means (PSNR, SSIM, LPIPS) over their per-pair values."""
    from metrics.bootstrap import mean_half_width

    return {f"{k}_ci": None if v is None else mean_half_width(v, boot) for k, v in fidelity.per_pair().items()}


def check_samples(cell: Cell, samples_root: str | Path = "results") -> None:
    """The cell's shards and its baseline's (`none`, for fidelity) all present and made under the settings
    asked for now, checked from their meta before any metric work."""
    root, n, shard = Path(samples_root) / "samples" / cell.model, cell.num_samples, cell.config["shard_size"]
    check_cell(root / cell.method, n, shard, cell.sample_identity())
    if cell.config["fidelity_samples"] and cell.method != "none":
        check_cell(root / "none", n, shard, Cell(cell.config, cell.model, "none").sample_identity())


def reference_identity(cell: Cell) -> dict:
    """What FID reference statistics depend on beyond their network and resolution (checked by
    metrics.fid.check_compatible): the held-out samples' identity, the shapes' seed, or the image folder."""
    kind, m = cell.model_cfg.get("reference", "heldout"), cell.model_cfg
    if kind == "heldout":
        n = m.get("reference_samples", cell.num_samples)
        return {"kind": kind, "n": n, "samples": Cell(cell.config, cell.model, "none").sample_identity(
            cell.config["seed"] + 1)}
    if kind == "shapes":
        from dsbench.conditions import SHAPES_REFERENCE_SEED

        return {"kind": kind, "n": m.get("reference_samples", 2000), "seed": SHAPES_REFERENCE_SEED}
    from metrics.fid import image_list_sha256

    folder = _reference_folder(cell)
    return {"kind": kind, "folder": str(folder), "images_sha256": image_list_sha256([f.name for f in _image_files(folder)])}


def _reference_folder(cell: Cell) -> Path:
    kind = cell.model_cfg.get("reference", "heldout")
    return Path(cell.config["resources"]) / "reference" / f"{kind}_{get_preset(cell.model).resolution}"


def _image_files(folder: Path) -> list[Path]:
    return sorted(itertools.chain(folder.glob("*.png"), folder.glob("*.jpg"), folder.glob("*.JPEG")))


def check_reference_identity(cell: Cell, path: Path, meta: dict) -> None:
    how = f"delete it and rebuild it (`dsbench reference --model {cell.model} --out {path}`, or the reference rule)"
    found = meta.get("identity")
    if found is None:
        raise StaleShardError(f"reference statistics {path} record no identity (made by an older dsbench): {how}")
    diff = identity_difference(found, reference_identity(cell))
    if diff is not None:
        raise StaleShardError(f"reference statistics {path} were made under other settings: {diff}; {how}")


def _adm_extractor(cell: Cell):
    """ADM's Inception (imagenet_adm), or the shapes classifier in its contract (shapes_adm)."""
    from metrics.adm import load_adm_extractor

    dev = device_for(cell.config)
    if cell.model_cfg.get("reference") == "shapes_adm":
        from metrics.shapes_classifier import ShapesAdmExtractor, load_shapes_classifier
        from models.proxy import proxy_dir

        return ShapesAdmExtractor(load_shapes_classifier(proxy_dir("shapes_classifier"), dev)).to(dev).eval()
    return load_adm_extractor(weights_dir(cell.config), dev)


def _adm(cell: Cell, reference: Path):
    """(ADM reference batch, extractor) for Table 2, both checked before any feature work. imagenet_adm:
    ADM's file under resources/ (``reference`` caches its P/R features); shapes_adm: ``reference`` itself."""
    from metrics.adm import INCEPTION_DIMS, REFERENCE_FILE, check_reference_network, load_adm_reference
    from metrics.shapes_classifier import ShapesAdmExtractor

    if cell.model_cfg.get("reference") == "shapes_adm":
        path, dims = reference, ShapesAdmExtractor.dims
    else:
        path, dims = Path(cell.config["resources"]) / "reference" / REFERENCE_FILE, INCEPTION_DIMS
    ref = load_adm_reference(path, resolution=get_preset(cell.model).resolution, dims=dims)
    extractor = _adm_extractor(cell)
    check_reference_network(ref, extractor)
    return ref, extractor


def _image_reward(config: dict, n: int | None, dev):
    """ImageReward (Table 9), files and environment checked now; ``n``: PartiPrompts' exact count, each
    prompt equally often (None elsewhere). ``python: current`` runs the worker with this interpreter (the
    fake backend is stdlib-only: smoke runs)."""
    from metrics.external import configured_python
    from metrics.imagereward import ImageRewardScore

    cfg = config["metrics"]["image_reward"]
    python = configured_python("imagereward", cfg.get("python"))
    return ImageRewardScore(backend=cfg.get("backend", "real"), weights_dir=weights_dir(config) / "imagereward",
                            device=str(dev), expected_n=n, python=python)


def _clip_scores(m: dict, wdir: Path, dev) -> dict:
    """The configured CLIP modes' metrics, networks loaded (a missing weight is an error here)."""
    from metrics.clip_score import ClipScore, TocaCompatClipScore, check_mode
    from metrics.networks import load_clip, load_transformers_clip

    mode, name = m.get("clip_mode", "correct"), m["clip_network"]
    check_mode(mode)
    scores = {}
    if mode in ("correct", "both"):
        scores["correct"] = ClipScore(load_clip(name, wdir / WEIGHT_FILES.get(name, ""), dev), dev)
    if mode in ("toca_compat", "both"):
        scores["toca_compat"] = TocaCompatClipScore(*load_transformers_clip(name, wdir / TOCA_CLIP_DIRS.get(name, ""), dev), dev)
    return scores


def reference_stats(cell: Cell, out: str | Path, samples_root: str | Path = "results") -> dict:
    """Reference statistics for the cell's model. `heldout`: the unaccelerated model on held-out seeds
    (tiny runs have no real data); `shapes`: the proxies' procedural data; real references come from an
    image folder under resources/."""
    from metrics.fid import make_reference_stats

    config, res = cell.config, get_preset(cell.model).resolution
    kind = cell.model_cfg.get("reference", "heldout")
    if kind == "imagenet_adm":  # ADM's batch holds its own moments: cache the P/R reference features
        from metrics.adm import reference_pool_features

        ref, extractor = _adm(cell, Path(out))
        feats = reference_pool_features(ref, extractor, device_for(config), cache_path=out)
        return {"n": len(feats), "network_id": extractor.network_id}
    if kind == "shapes_adm":  # our own ADM-format batch: renders + the shapes extractor's moments
        from metrics.adm import write_adm_reference

        extractor = _adm_extractor(cell)
        ref = write_adm_reference(out, _shapes_batches(cell.model_cfg.get("reference_samples", 2000), res),
                                  extractor, device_for(config))
        return {"n": ref.n_images, "network_id": extractor.network_id}
    dev, fid_net = device_for(config), _fid_network(config)
    if kind == "heldout":
        n = cell.model_cfg.get("reference_samples", cell.num_samples)
        heldout = {**cell.config, "models": {cell.model: {**cell.model_cfg, "num_samples": n}}}
        from dsbench.generate import generate

        ref_cell = Cell(heldout, cell.model, "none")
        folder = Path(samples_root) / "reference" / f"{cell.model}_heldout"
        # A different seed stream from every sample that is evaluated: (seed + 1, i) never equals (seed, i).
        generate(ref_cell, folder, base_seed=config["seed"] + 1, progress=False)
        batches = iter_images(folder, n, config["shard_size"])
        names = [f"heldout:{sample_seed(config['seed'] + 1, i)}" for i in range(n)]
    elif kind == "shapes":  # the proxies' real data: fresh renders, none of them a training image
        from dsbench.conditions import SHAPES_REFERENCE_SEED

        n = cell.model_cfg.get("reference_samples", 2000)
        batches = _shapes_batches(n, res)
        names = [f"shapes:{SHAPES_REFERENCE_SEED}:{i}" for i in range(n)]
    else:
        folder = _reference_folder(cell)
        files = _image_files(folder)
        if len(files) < 2:
            raise FileNotFoundError(
                f"reference images for {kind!r} are missing: {folder} must hold the reference set as PNG/JPEG, "
                f"center-cropped and resized to {res}px (see README, 'Data')")
        batches = (_load_images(files[i:i + 64]) for i in range(0, len(files), 64))
        names = [f.name for f in files]
    return make_reference_stats(batches, names, fid_net, dev, res, out, identity=reference_identity(cell))


def _shapes_batches(n: int, res: int):
    """The proxies' reference data: n fresh renders (none of them a training image), in batches of 256."""
    from dsbench.conditions import SHAPES_REFERENCE_SEED
    from dsbench.shapes import make_shapes

    return (make_shapes(min(256, n - i), seed=SHAPES_REFERENCE_SEED, size=res, start=i)[0] for i in range(0, n, 256))


def _load_images(files) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
