"""What real runs need, table by table: every weight, dataset and reference file, present or missing,
and how to get what is missing. `dsbench doctor` exits non-zero while anything is missing.

Tables of the configured matrix are derived from the config (their model, its dataset and reference,
the configured metric networks). Video models (Wan2.1, Table 3) need VBench's
suite, models and environment instead of the image metrics. The paper's Table 9 (FLUX.1-schnell,
ImageReward) has no model adapter here yet, nor Table 3 in a config without a video model: their needs
are listed whenever the config runs real models, so a user preparing a cluster sees the whole list at once.
"""
from __future__ import annotations

from pathlib import Path

from dsbench.conditions import DATASET_FILES, dataset_path
from dsbench.config import GENERATED_REFERENCES
from models.registry import get_preset  # pure data: no torch import

CLIP_HINT = "hf download timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin && cp <that file> {path}"
REFERENCE_HELP = {
    "coco2017_val": "the images of the COCO-30k caption list, centre-cropped and resized (PIL bicubic) to {res}px: "
                    "`dsbench prepare-coco` (or `snakemake prepare_coco`) from the local COCO captions JSON and images",
    "imagenet_train": "ImageNet train images center-cropped and resized to {res}px as PNG, the ADM reference "
                      "set (https://image-net.org)",
}
def _row(what, needed_by, where, present, how) -> dict:
    return dict(what=what, needed_by=needed_by, where=str(where), present=bool(present), how=how)


def _model_rows(config: dict, name: str, label: str) -> list[dict]:
    from models import get_adapter
    from models.weights import fetch_hint, is_present

    m, res_dir, rows = config["models"][name], Path(config["resources"]), []
    if m["source"] == "real":
        repos = [m["weights"]] if m.get("weights") else get_adapter(name).weight_repos()
        rows += [_row("weights", label, repo, is_present(repo), fetch_hint(repo)) for repo in repos]
    for kind, dataset in (("dataset", m["dataset"]), ("training captions", m.get("train_dataset"))):
        if dataset in DATASET_FILES:
            path = dataset_path(dataset, res_dir)
            rows.append(_row(kind, label, path, path.is_file(), DATASET_FILES[dataset][1]))
    if m["source"] == "proxy":
        from models.proxy import ProxyWeightsError, proxy_dir, verified

        folder = proxy_dir(get_preset(name).proxy, m.get("weights"))
        try:
            ok = bool(verified(folder))
        except ProxyWeightsError:
            ok = False
        rows.append(_row("proxy weights", label, folder, ok,
                         "git checkout the committed folder, or `snakemake --cores 2 train_proxies`"))
    rows += _sparsedit_rows(config, name, label)
    ref = m.get("reference", "heldout")
    if ref not in (*GENERATED_REFERENCES, "imagenet_adm", "vbench", "none"):
        res = get_preset(name).resolution
        folder = res_dir / "reference" / f"{ref}_{res}"
        rows.append(_row("reference images", label, folder, folder.is_dir() and any(folder.iterdir()),
                         REFERENCE_HELP[ref].format(res=res)))
    if ref == "imagenet_adm":  # Table 2's ADM suite: FID-50k, sFID, precision/recall against ADM's batch
        from metrics import adm

        path = res_dir / "reference" / adm.REFERENCE_FILE
        rows.append(_row("ADM reference batch", label, path, path.is_file(), f"curl -L -o {path} {adm.REFERENCE_URL}"))
        path = res_dir / "weights" / adm.INCEPTION_FILE
        rows.append(_row("ADM Inception", label, path, path.is_file(), f"curl -L -o {path} {adm.INCEPTION_URL}"))
    return rows


def _sparsedit_rows(config: dict, name: str, label: str) -> list[dict]:
    """The fine-tuned SparseDiT weights each sparsedit variant of the model samples with (none: zero-shot)."""
    from methods.sparsedit import PROVENANCE, training_command, weights_folder

    rows = []
    for variant in config["models"][name]["methods"]:
        entry = config["methods"][variant]
        if entry["method"] == "sparsedit" and entry.get("weights"):
            folder = weights_folder(entry["weights"])
            made = f"results/sparsedit/{name}/{variant}"
            how = f"`{training_command(name, variant)}`" + ("" if folder == Path(made) else f", then copy {made} to {folder}")
            rows.append(_row(f"SparseDiT weights ({variant})", label, folder, (folder / PROVENANCE).is_file(), how))
    return rows


def _peer_rows(config: dict, name: str, label: str) -> list[dict]:
    """The peer libraries the model's variants attach that are optional extras (cache-dit)."""
    from methods.peers.cachedit import EXTRA, installed
    from methods.registry import METHODS

    libraries = {getattr(METHODS[config["methods"][v]["method"]], "library", None)
                 for v in config["models"][name]["methods"]}
    if "cache-dit" not in libraries:
        return []
    return [_row("cache-dit (peer rows)", label, "python package cache_dit",
                 installed(), EXTRA)]


def _metric_rows(config: dict, name: str, label: str) -> list[dict]:
    import torch.hub

    from dsbench.evaluate import TOCA_CLIP_DIRS, WEIGHT_FILES, weights_dir
    from metrics.networks import (ALEXNET_FILE, ALEXNET_URL, CLIP_TRANSFORMERS_REPO, INCEPTION_FILE,
                                  INCEPTION_URL)

    m, wdir = config["metrics"], weights_dir(config)
    text = config["models"][name]["dataset"] not in ("imagenet_classes", "shapes_classes")
    video = get_preset(name).is_video
    rows = _vbench_rows(config, label) if video and m.get("vbench", {}).get("backend", "real") == "real" else []
    if m["fid_network"] == "inception" and not video:
        path = wdir / INCEPTION_FILE
        rows.append(_row("FID Inception", label, path, path.is_file(), f"curl -L -o {path} {INCEPTION_URL}"))
    mode = m.get("clip_mode", "correct")
    text = text and not video
    if text and m["clip_network"] in WEIGHT_FILES and mode in ("correct", "both"):
        path = wdir / WEIGHT_FILES[m["clip_network"]]
        rows.append(_row("CLIP (open_clip)", label, path, path.is_file(), CLIP_HINT.format(path=path)))
    if text and m["clip_network"] in TOCA_CLIP_DIRS and mode in ("toca_compat", "both"):
        path = wdir / TOCA_CLIP_DIRS[m["clip_network"]]
        rows.append(_row("CLIP (transformers)", label, path, (path / "config.json").is_file(),
                         f"hf download {CLIP_TRANSFORMERS_REPO} --local-dir {path}"))
    if m["lpips_network"] == "alex":
        path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
        rows.append(_row("LPIPS backbone", label, path, path.is_file(), f"curl -L -o {path} {ALEXNET_URL}"))
    return rows


def _env_row(name: str, label: str) -> dict:
    from metrics import external

    d = external.env_dir(name, "envs")  # relative, as workflow/rules/envs.smk builds it
    return _row(f"{name} environment", label, d, (d / external.MARKER).is_file(), external.build_hint(name, "envs"))


def _vbench_rows(config: dict, label: str) -> list[dict]:
    """VBench's model files (every dimension) and its environment."""
    from metrics import vbench

    wdir = Path(config["resources"]) / "weights"
    rows = [_row("VBench model", label, p, p.exists(), how) for p, how in vbench.required_files(None, wdir / "vbench")]
    return rows + [_env_row("vbench", label)]


def _paper_only_rows(config: dict) -> list[dict]:
    """Tables without a configured model: 3 (unless a video model is configured) and 9, with their models,
    prompts, scorers' files and the scorers' own virtual environments."""
    from metrics import imagereward
    from models.weights import fetch_hint, is_present

    res, wdir = Path(config["resources"]), Path(config["resources"]) / "weights"
    rows = []
    if not any(get_preset(name).is_video for name in config["models"]):
        repo = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
        rows.append(_row("weights", "table3", repo, is_present(repo), fetch_hint(repo)))
        full_info = dataset_path("vbench", res)
        rows.append(_row("dataset", "table3", full_info, full_info.is_file(), DATASET_FILES["vbench"][1]))
        rows += _vbench_rows(config, "table3")
    repo = "black-forest-labs/FLUX.1-schnell"
    rows.append(_row("weights", "table9", repo, is_present(repo), fetch_hint(repo)))
    parti = dataset_path("partiprompts", res)
    rows.append(_row("dataset", "table9", parti, parti.is_file(), DATASET_FILES["partiprompts"][1]))
    rows += [_row("ImageReward model", "table9", p, p.exists(), how)
             for p, how in imagereward.required_files(wdir / "imagereward")]
    return rows + [_env_row("imagereward", "table9")]


def check(config: dict, models=None) -> list[dict]:
    """Rows (what, needed by, where, present, how to get it), one per file and table; the configured
    tables' models first, then every model outside a table, then Tables 3 and 9 for real-model configs.
    With `models` (the models a workflow run's jobs sample or score, see :func:`gate`): only theirs, and
    not the paper-only Tables 3 and 9."""
    if models is not None:
        keep = set(models)
        config = {**config, "models": {k: v for k, v in config["models"].items() if k in keep},
                  "tables": {k: t for k, t in config["tables"].items() if t["model"] in keep}}
    rows, seen = [], set()

    def add(new: list[dict]) -> None:
        for r in new:
            key = r["where"]
            if key not in seen:  # a file two tables need is listed once, under the first
                seen.add(key)
                rows.append(r)

    in_tables = set()
    for tname, table in config["tables"].items():
        in_tables.add(table["model"])
        add(_model_rows(config, table["model"], tname) + _peer_rows(config, table["model"], tname)
            + _metric_rows(config, table["model"], tname))
    for name in config["models"]:
        if name not in in_tables:
            add(_model_rows(config, name, name) + _peer_rows(config, name, name) + _metric_rows(config, name, name))
    if models is None and any(m["source"] == "real" for m in config["models"].values()):
        add(_paper_only_rows(config))
    return rows


def report(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        mark = "ok     " if r["present"] else "MISSING"
        lines.append(f"[{mark}] {r['needed_by']:<8} {r['what']:<24} {r['where']}")
        if not r["present"]:
            lines.append(f"          get it: {r['how']}")
    missing = sum(not r["present"] for r in rows)
    lines.append(f"{len(rows) - missing} present, {missing} missing" if rows else "nothing external is needed")
    return "\n".join(lines)


def gate(config: dict, models) -> tuple[bool, str]:
    """The workflow's first step (Snakefile `onstart`, after the DAG is built, before any job; not in dry
    runs): check what the requested targets' models need, so a run without weights stops once, with the
    whole list, instead of failing job after job under keep-going. (ok, the report; "" if nothing to check)."""
    models = sorted(set(models))
    if not models:
        return True, ""
    rows = check(config, models)
    ok = all(r["present"] for r in rows)
    head = f"dsbench doctor ({', '.join(models)}): " + ("everything external is present" if ok else
                                                         "files are missing; no job was started")
    return ok, head + "\n" + report(rows)
