"""What real runs of the configured matrix need, what is present, and how to get what is missing."""
from __future__ import annotations

from pathlib import Path

from dsbench.conditions import DATASET_FILES, dataset_path

CLIP_HINT = "hf download timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin && cp <that file> {path}"
REFERENCE_HELP = {
    "coco2017_val": "the COCO val2017 images of the caption list, center-cropped and resized (PIL bicubic) "
                    "to {res}px, as PNG (http://images.cocodataset.org/zips/val2017.zip)",
    "imagenet_train": "ImageNet train images center-cropped and resized to {res}px as PNG, the ADM reference "
                      "set (https://image-net.org)",
}


def check(config: dict) -> list[dict]:
    """Rows of (what, needed by, path or id, present, how to get it)."""
    from models import get_adapter
    from models.registry import get_preset
    from models.weights import fetch_hint, is_present

    res_dir = Path(config["resources"])
    rows = []
    for name, m in config["models"].items():
        if m["source"] == "real":
            repos = [m["weights"]] if m.get("weights") else get_adapter(name).weight_repos()
            for repo in repos:
                rows.append(dict(what="weights", needed_by=name, where=repo, present=is_present(repo),
                                 how=fetch_hint(repo)))
        path = dataset_path(m["dataset"], res_dir)
        if m["dataset"] in DATASET_FILES:
            rows.append(dict(what="dataset", needed_by=name, where=str(path), present=path.is_file(),
                             how=DATASET_FILES[m["dataset"]][1]))
        if m["source"] == "proxy":
            from models.proxy import ProxyWeightsError, proxy_dir, verified

            folder = proxy_dir(get_preset(name).proxy, m.get("weights"))
            try:
                ok = bool(verified(folder))
            except ProxyWeightsError:
                ok = False
            rows.append(dict(what="proxy weights", needed_by=name, where=str(folder), present=ok,
                             how="git checkout the committed folder, or `snakemake --cores 2 train_proxies`"))
        ref = m.get("reference", "heldout")
        if ref not in ("heldout", "shapes"):
            res = get_preset(name).resolution
            folder = res_dir / "reference" / f"{ref}_{res}"
            rows.append(dict(what="reference images", needed_by=name, where=str(folder),
                             present=folder.is_dir() and any(folder.iterdir()),
                             how=REFERENCE_HELP[ref].format(res=res)))
    # The file names come from where they are loaded (metrics/networks.py, dsbench/evaluate.py).
    import torch.hub

    from dsbench.evaluate import WEIGHT_FILES, weights_dir
    from metrics.networks import ALEXNET_FILE, ALEXNET_URL, INCEPTION_FILE, INCEPTION_URL

    m, wdir = config["metrics"], weights_dir(config)
    needed = []
    if m["fid_network"] == "inception":
        path = wdir / INCEPTION_FILE
        needed.append(("fid_network weights", path, f"curl -L -o {path} {INCEPTION_URL}"))
    if m["clip_network"] in WEIGHT_FILES:
        path = wdir / WEIGHT_FILES[m["clip_network"]]
        needed.append(("clip_network weights", path, CLIP_HINT.format(path=path)))
    if m["lpips_network"] == "alex":
        path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
        needed.append(("LPIPS backbone", path, f"curl -L -o {path} {ALEXNET_URL}"))
    rows += [dict(what=what, needed_by="metrics", where=str(path), present=path.is_file(), how=how)
             for what, path, how in needed]
    return rows


def report(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        mark = "ok     " if r["present"] else "MISSING"
        lines.append(f"[{mark}] {r['what']:<22} {r['needed_by']:<18} {r['where']}")
        if not r["present"]:
            lines.append(f"          get it: {r['how']}")
    missing = sum(not r["present"] for r in rows)
    lines.append(f"{len(rows) - missing} present, {missing} missing" if rows else "nothing external is needed")
    return "\n".join(lines)
