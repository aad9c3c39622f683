"""What real runs of the configured matrix need, what is present, and how to get what is missing."""
from __future__ import annotations

from pathlib import Path

from dsbench.conditions import DATASET_FILES, dataset_path

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
NETWORK_FILES = {
    ("fid_network", "inception"): ("weights/inception-2015-12-05.pt", f"curl -L -o {{path}} {INCEPTION_URL}"),
    ("clip_network", "ViT-L-14-quickgelu"): (
        "weights/open_clip_vit_l14_openai.bin",
        "hf download timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin && cp <that file> {path}"),
}
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
        ref = m.get("reference", "heldout")
        if ref != "heldout":
            res = get_preset(name).resolution
            folder = res_dir / "reference" / f"{ref}_{res}"
            rows.append(dict(what="reference images", needed_by=name, where=str(folder),
                             present=folder.is_dir() and any(folder.iterdir()),
                             how=REFERENCE_HELP[ref].format(res=res)))
    for key, value in config["metrics"].items():
        if (key, value) in NETWORK_FILES:
            rel, how = NETWORK_FILES[(key, value)]
            path = res_dir / rel
            rows.append(dict(what=f"{key} weights", needed_by="metrics", where=str(path), present=path.is_file(),
                             how=how.format(path=path)))
    if config["metrics"]["lpips_network"] == "alex":
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
        rows.append(dict(what="LPIPS backbone", needed_by="metrics", where=str(path), present=path.is_file(),
                         how=f"curl -L -o {path} https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"))
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
