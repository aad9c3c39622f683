"""`dsbench <verb>`: every workflow step, runnable by hand. The Snakemake rules call these verbs."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from dsbench import config as config_mod


def _config(args) -> dict:
    return config_mod.load_arg(args.config)


def _cell(args, cfg=None):
    from dsbench.cell import Cell

    cfg = cfg or _config(args)
    return Cell(cfg, args.model, args.method)


def _out(path, obj) -> None:
    from dsbench.io import write_json

    if path:
        write_json(path, obj)


def cmd_generate(args):
    from dsbench.generate import generate

    paths = generate(_cell(args), Path(args.root) / "samples" / args.model / args.method, shards=args.shard)
    print(f"{len(paths)} shard(s) present: {paths[0].parent}")


def cmd_reference(args):
    from dsbench.cell import Cell
    from dsbench.evaluate import reference_stats

    meta = reference_stats(Cell(_config(args), args.model, "none"), args.out, samples_root=args.root)
    print(f"reference statistics {args.out}: n={meta['n']} network={meta['network_id']}")


def cmd_macs(args):
    from dsbench.measure import count_macs

    import yaml

    cfg = _config(args)
    # A variant of the config, or a registered method name with its defaults; --set overrides settings.
    variant = cfg["methods"].get(args.method, {"method": args.method})
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        raise ValueError(f"--set takes KEY=VALUE, got {bad}")
    cfg["methods"][args.method] = {**variant, **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}}
    config_mod.validate(cfg)
    if args.model in cfg["models"] and args.method not in cfg["models"][args.model]["methods"]:
        cfg["models"][args.model]["methods"].append(args.method)
    cell = _cell(args, cfg)
    result = count_macs(cell, device=args.device)
    result["cell_digest"] = config_mod.digest(cell.sample_identity())  # dsbench aggregate checks it
    _out(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"# {args.model} / {args.method}: {result['num_steps']} steps, {result['denoiser_calls']} denoiser "
              f"calls, per image ({result['device']})")
        if "blocks_computed_per_call" in result:    # a peer: what its library decided, counted per call
            print(f"# decided by the library at run time: {result['images']} samples, "
                  f"{result['blocks_computed_per_call']:.2f} of {result['blocks']} blocks computed per call")
        elif "full_steps_mean" in result:
            print(f"# decided at run time: mean over {result['images']} samples, "
                  f"{result['full_steps_mean']:.2f} full steps on average")
        else:
            full = result["plan_full_steps"]
            print(f"# full steps (every token of every block), in sampling order: {len(full)}: "
                  f"{', '.join(map(str, full))}")
        print(f"macs_c1 {result['macs_c1'] / 1e12:.4g} T")
        print(f"macs_total {result['macs_total'] / 1e12:.4g} T")
        if "paper_macs_per_forward" in result:
            print(f"paper_macs_per_forward {result['paper_macs_per_forward'] / 1e9:.4g} G  ({result['paper_convention']})")


def cmd_latency(args):
    from dsbench.measure import measure_latency

    cfg = _config(args)
    methods = args.methods.split(",") if args.methods else cfg["models"][args.model]["methods"]
    # The workflow's latency job owns all cores and says how many through OMP_NUM_THREADS.
    omp = os.environ.get("OMP_NUM_THREADS", "")
    result = measure_latency(cfg, args.model, methods, threads=int(omp) if omp.isdigit() else None)
    _out(args.out, result)
    print(f"{result['device']}, {result['threads']} threads, batch {result['batch_size']}")
    for m, r in result["methods"].items():
        print(f"{m:<16} {r['median_s'] * 1e3:9.1f} ms (IQR {r['iqr_s'] * 1e3:.1f} ms, {r['runs']} runs)  "
              f"speedup {r['speedup']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]")


def cmd_evaluate(args):
    from dsbench.evaluate import evaluate

    cell = _cell(args)
    result = evaluate(cell, samples_root=args.root, reference=args.reference)
    result["cell_digest"] = config_mod.digest(cell.sample_identity())  # dsbench aggregate checks it
    _out(args.out, result)
    print(json.dumps(result, indent=2))


def cmd_aggregate(args):
    from dsbench.aggregate import aggregate
    from dsbench.cell import Cell
    from dsbench.provenance import provenance

    from dsbench.io import read_json

    cfg = _config(args)
    methods = cfg["models"][args.model]["methods"]
    root = Path(args.root)
    # Each cell's MACs and metrics must come from the settings asked for now (a result made by hand
    # under another config is refused, not merged).
    for m in methods:
        want = config_mod.digest(Cell(cfg, args.model, m).sample_identity())
        for kind in ("macs", "metrics"):
            path = root / kind / args.model / f"{m}.json"
            got = read_json(path).get("cell_digest") if path.is_file() else None
            if path.is_file() and got != want:
                raise ValueError(f"{path} was computed under other settings than {args.model}/{m} has now (cell "
                                 f"digest {got} != {want}): rerun `dsbench {'evaluate' if kind == 'metrics' else kind}"
                                 f" --model {args.model} --method {m}`")
    df = aggregate(args.model, methods,
                   [root / "macs" / args.model / f"{m}.json" for m in methods],
                   [root / "metrics" / args.model / f"{m}.json" for m in methods],
                   root / "latency" / f"{args.model}.json",
                   {m: provenance(Cell(cfg, args.model, m)) for m in methods}, Path(args.out))
    print(df.drop(columns=["versions"], errors="ignore").to_string(index=False))


def cmd_render(args):
    import pandas as pd

    from dsbench.tables import add_derived_columns, render_table

    cfg = _config(args)
    table = cfg["tables"][args.table]
    ours = pd.read_csv(Path(args.root) / f"{table['model']}.csv")
    # CFG branches per image and step: 2 with guidance (ModelAdapter.cfg_branches, every family), else 1.
    branches = 2 if cfg["models"][table["model"]]["guidance_scale"] > 1 else 1
    ours = add_derived_columns(ours, branches)
    paper = Path(args.paper_dir) / f"{args.table}.csv"
    out = Path(args.root) / "tables" / args.table
    render_table(args.table, ours, paper if paper.is_file() else None, table["rows"],
                 table.get("columns", list(config_mod.DEFAULT_TABLE_COLUMNS)),
                 out, notes=table.get("notes"), paper_columns=table.get("paper_columns"),
                 column_titles=table.get("column_titles"))
    print(Path(f"{out}.md").read_text())


def cmd_train_proxy(args):
    from dsbench.proxy_train import train_proxy

    out = Path(args.out)
    if (out / "provenance.json").exists() and not args.force:
        raise FileExistsError(f"{out} already holds trained weights; pass --force to retrain over them")
    info = train_proxy(args.name, out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    print(json.dumps(info, indent=2))


def cmd_finetune_sparsedit(args):
    import shlex

    import torch

    from dsbench.sparsedit_train import finetune_variant, inline_variant

    if (args.method is None) == (args.settings is None):
        raise ValueError("give the variant to fine-tune: --method (a sparsedit variant of the config) or --settings")
    inline = inline_variant(args.settings) if args.settings is not None else None
    what = ["--method", args.method] if inline is None else ["--settings", args.settings]
    command = f"OMP_NUM_THREADS={torch.get_num_threads()} " + shlex.join(
        ["dsbench", "finetune-sparsedit", "--config", args.config, "--model", args.model, *what, "--out", args.out])
    info = finetune_variant(_config(args), args.model, args.out, method=args.method, inline=inline,
                            force=args.force, command=command)
    print(f"{args.out}: {info['steps_done']} steps in {info['train_seconds']} s, loss (mean of the last 50) "
          f"{info['final_loss_mean_last_50']:.4f}")


def cmd_match_macs(args):
    from dsbench.cell import Cell
    from dsbench.matching import MATCH_KEY, MatchSpec
    from dsbench.measure import cell_macs, match_macs

    cfg = _config(args)
    entry = cfg["methods"][args.method]
    if args.out:  # rule match_budget: everything from the variant's `match` block
        if MATCH_KEY not in entry:
            raise ValueError(f"--out writes a budget match: {args.method} has no `match` block")
        if args.target or args.key or args.lo is not None or args.hi is not None or args.tol is not None:
            raise ValueError("--out takes the target, key, range and tolerance from the variant's `match` block; "
                             "drop --target / --key / --lo / --hi / --tol")
        spec = MatchSpec.of(entry[MATCH_KEY], f"methods.{args.method}.match")
        if args.out.exists() and not args.force:
            raise FileExistsError(f"{args.out} exists; pass --force to match again")
    else:
        if not args.target:
            raise ValueError("match-macs needs --target (or --out, with the variant's `match` block)")
        spec = MatchSpec(args.target, args.key or "fresh_ratio", (0.0 if args.lo is None else args.lo,
                         1.0 if args.hi is None else args.hi), 0.005 if args.tol is None else args.tol,
                         args.iterations)
    target = cell_macs(Cell(cfg, args.model, spec.target))
    value, macs = match_macs(cfg, args.model, args.method, spec.key, target, *spec.range, spec.tolerance,
                             spec.iterations)
    error = macs / target - 1
    print(f"{args.method}.{spec.key} = {value:.6g}: macs_c1 {macs / 1e9:.6g} G vs {spec.target} "
          f"{target / 1e9:.6g} G ({error * 100:+.2f} %)")
    if args.out:
        from dsbench.io import write_json

        write_json(args.out, {"model": args.model, "variant": args.method, "spec": spec.as_dict(), "key": spec.key,
                              "value": value, "macs_c1": macs, "target_macs_c1": target, "relative_error": error,
                              "within_tolerance": abs(error) <= spec.tolerance})


def cmd_train_schedule(args):
    from dsbench.schedules import train_cell

    sched = train_cell(_cell(args), args.out, force=args.force)
    if "search" in sched.meta:
        s = sched.meta["search"]
        how = f"{s['algorithm']} search, {s['evaluations']} evaluations, best fitness {s['best_fitness']:.4f}"
    else:
        last = [e for e in sched.meta["loss_curve"] if "loss" in e]
        how = f"{len(last)} iterations, last loss {last[-1]['loss']:.4f}"
    print(f"{args.out}: mean sparsity {sched.mean_sparsity():.4f} over {sched.meta['items']} items; {how}; "
          f"{sched.meta['train_seconds']} s")


def cmd_calibrate_peer(args):
    from dsbench.matching import MATCH_KEY, without_match
    from dsbench.peer_calibration import calibrate_cell

    cfg = _config(args)
    entry = cfg["methods"][args.method]
    if MATCH_KEY in entry:  # the calibration reads none of the run-time knobs, so not the matched one either
        cfg = {**cfg, "methods": {**cfg["methods"], args.method: without_match(entry)}}
    rec = calibrate_cell(_cell(args, cfg), args.out, force=args.force)
    r = rec["mag_ratios"]
    print(f"{args.out}: {len(r)} magnitude ratios ({min(r):.4f} … {max(r):.4f}) on {rec['conditions']['count']} "
          f"{rec['conditions']['dataset']} conditions")


def cmd_pareto(args):
    from dsbench.pareto import write_pareto
    from methods.registry import METHODS

    cfg = _config(args)
    kinds = {v: getattr(METHODS[spec["method"]], "library", "ours") for v, spec in cfg["methods"].items()}
    csv = Path(args.root) / f"{args.model}.csv"
    print(write_pareto(csv, kinds, args.out, title=f"{args.model}: speed and quality of every method"))


def cmd_verdict(args):
    from dsbench.matching import budget_groups
    from dsbench.verdict import write_verdict

    cfg = _config(args)
    matched_to, nearest = budget_groups(cfg, args.model)
    if not matched_to:
        raise ValueError(f"{args.model} has no budget-matched variants (a `match` block): nothing to judge")
    tolerances = {v: cfg["methods"][v]["match"].get("tolerance", 0.01) for vs in matched_to.values() for v in vs}
    print(write_verdict(Path(args.root) / f"{args.model}.csv", matched_to, nearest, args.out, args.model,
                        tolerances), end="")


def cmd_heatmap(args):
    from dsbench.schedules import render_heatmap

    print(render_heatmap(_cell(args), args.out, view=args.view))


def cmd_grid(args):
    from dsbench.grid import method_rows, sample_grid

    cfg = _config(args)
    m = cfg["models"][args.model]
    methods = args.methods.split(",") if args.methods else m["methods"]
    unknown = [x for x in methods if x not in m["methods"]]
    if unknown:
        raise ValueError(f"method variant(s) {unknown} are not run on {args.model} (its methods: {m['methods']})")
    from dsbench.cell import Cell
    from dsbench.samples import check_cell

    for x in methods:  # rows made under other settings would show another experiment
        check_cell(Path(args.root) / "samples" / args.model / x, min(args.n, m["num_samples"]), cfg["shard_size"],
                   Cell(cfg, args.model, x).sample_identity())
    rows = method_rows(args.root, args.model, methods, m["num_samples"], cfg["shard_size"], args.n)
    if args.real and m["dataset"].startswith("shapes"):  # the proxies: real renders of the same conditions
        from dsbench.conditions import SHAPES_CONDITION_SEED
        from dsbench.shapes import make_shapes

        rows = {"asked for": make_shapes(args.n, seed=SHAPES_CONDITION_SEED, size=rows[methods[0]].shape[1])[0],
                **rows}
    print(sample_grid(rows, args.out))


def cmd_prepare_coco(args):
    from dsbench import datasets
    from dsbench.conditions import DATASET_FILES

    res_dir = Path(args.resources)
    out = res_dir / Path(DATASET_FILES["coco30k"][0]).parent
    rows = datasets.select_coco_captions(args.annotations, n=args.n, seed=args.seed)
    old = out / "manifest.json"
    if old.is_file() and not args.force:
        from dsbench.io import read_json

        prev = read_json(old)
        if (prev["source"], prev["seed"], prev["n"]) != (str(args.annotations), args.seed, args.n):
            raise FileExistsError(f"{out} holds a caption list prepared from {prev['source']} (seed {prev['seed']}, "
                                  f"n {prev['n']}); pass --force to replace it and its reference images")
    manifest = datasets.write_caption_list(rows, out, args.annotations, args.seed)
    for res in args.res:
        folder = res_dir / "reference" / f"coco2017_val_{res}"
        n = datasets.write_reference_images(rows, args.images, res, folder)
        print(f"{folder}: {n} images written ({len(rows) - n} already there)")
    print(f"{out / datasets.COCO_LIST}: {manifest['n']} captions, sha256 {manifest['captions_sha256']}")


def cmd_doctor(args):
    from dsbench.doctor import check, report

    rows = check(_config(args))
    print(report(rows))
    return 0 if all(r["present"] for r in rows) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsbench", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name, fn, help, model=True, method=False):
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", default="config.yaml", help="config file, or inline JSON (default config.yaml)")
        if model:
            s.add_argument("--model", required=True)
        if method:
            s.add_argument("--method", required=True, help="method variant (a key of the config's methods)")
        s.set_defaults(fn=fn)
        return s

    s = verb("generate", cmd_generate, "generate a cell's sample shards (resumes; verifies existing shards)",
             method=True)
    s.add_argument("--shard", type=int, action="append", help="only this shard (repeatable); default all")
    s.add_argument("--root", default="results")
    s = verb("reference", cmd_reference, "build FID reference statistics for a model")
    s.add_argument("--out", required=True)
    s.add_argument("--root", default="results")
    s = verb("macs", cmd_macs, "MACs per image of a whole sampling run, counted while it runs", method=True)
    s.add_argument("--device", default="auto",
                   help="meta (full size, no weights), cpu, cuda, or auto: meta for static plans, the config's "
                        "device (real runs, mean over samples) for methods that decide at run time")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the method (YAML value), e.g. --set faithful_quirk=true")
    s.add_argument("--json", action="store_true")
    s.add_argument("--out")
    s = verb("latency", cmd_latency, "median latency and speedup against none, all methods in one run")
    s.add_argument("--methods", help="comma-separated variants (default: the model's methods)")
    s.add_argument("--out")
    s = verb("evaluate", cmd_evaluate, "FID, CLIP and fidelity to none of a cell's samples", method=True)
    s.add_argument("--root", default="results")
    s.add_argument("--reference")
    s.add_argument("--out")
    s = verb("aggregate", cmd_aggregate, "merge a model's MACs, latency and metrics into one CSV")
    s.add_argument("--root", default="results")
    s.add_argument("--out", required=True)
    s = verb("render", cmd_render, "render a table with the paper's numbers beside ours", model=False)
    s.add_argument("--table", required=True)
    s.add_argument("--root", default="results")
    s.add_argument("--paper-dir", default=str(config_mod.REPO / "results" / "paper"))
    s = verb("train-proxy", cmd_train_proxy, "train a CPU proxy (DiT, PixArt or the shapes classifier) on the "
             "procedural shapes, deterministically from a seed", model=False)
    s.add_argument("--name", required=True, choices=["proxy_dit", "proxy_pixart", "shapes_classifier"])
    s.add_argument("--out", required=True, help="folder for the weights, provenance.json and loss.csv")
    s.add_argument("--steps", type=int, help="optimizer steps (default: dsbench/proxy_train.py DEFAULTS)")
    s.add_argument("--batch", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="retrain over existing weights")
    s = verb("train-schedule", cmd_train_schedule, "train a DiffSparse schedule (two-stage, LPIPS distillation); "
             "resumes from <out>.ckpt", method=True)
    s.add_argument("--out", required=True, help="the schedule's .safetensors (its .json provenance goes beside it)")
    s.add_argument("--force", action="store_true", help="train over an existing schedule")
    s = verb("finetune-sparsedit", cmd_finetune_sparsedit, "fine-tune a SparseDiT converted from the model's DiT "
             "(a sparsedit variant's plan and finetune settings); resumes from <out>.ckpt")
    s.add_argument("--method", help="a sparsedit variant of the config")
    s.add_argument("--settings", help="instead of --method: a sparsedit variant inline, as a JSON object "
                   "(method, plan keys, finetune); recorded in the provenance's command")
    s.add_argument("--out", required=True, help="folder for transformer/, provenance.json and loss.csv")
    s.add_argument("--force", action="store_true", help="train over a finished fine-tune")
    s = verb("calibrate-peer", cmd_calibrate_peer, "measure a calibrated peer's statistics (MagCache's magnitude "
             "ratios) with the peer's own calibration mode, on conditions disjoint from the evaluated ones",
             method=True)
    s.add_argument("--out", required=True, help="the calibration JSON (results/peers/{model}/{variant}.json)")
    s.add_argument("--force", action="store_true", help="measure over an existing calibration")
    s = verb("match-macs", cmd_match_macs, "the setting of a variant that matches another variant's predicted "
             "MACs (e.g. ToCa's fresh_ratio at a DiffSparse schedule's MACs)", method=True)
    s.add_argument("--target", help="the variant whose MACs to match")
    s.add_argument("--key", help="the setting to tune (default fresh_ratio)")
    s.add_argument("--lo", type=float, help="the range's low end (default 0)")
    s.add_argument("--hi", type=float, help="the range's high end (default 1)")
    s.add_argument("--tol", type=float, help="relative tolerance (default 0.5 %%)")
    s.add_argument("--iterations", type=int, default=30, help="most bisection steps (default 30; with --out, "
                   "the block's `iterations`)")
    s.add_argument("--out", type=Path, help="write the match of the variant's `match` block here "
                   "(results/matched/{model}/{variant}.json, rule match_budget)")
    s.add_argument("--force", action="store_true", help="match over an existing file")
    s = verb("heatmap", cmd_heatmap, "Figure 3: a schedule's per-sub-layer heatmap (layers × steps, as the paper)",
             method=True)
    s.add_argument("--out", required=True)
    s.add_argument("--view", choices=["paper", "steps"], default="paper",
                   help="paper (default): x = layers, y = steps 1 … T-1, colour = sparsity, as the paper's Figure 3; "
                        "steps: x = steps 0 … T-1, y = blocks, colour = fraction of tokens recomputed")
    s = verb("pareto", cmd_pareto, "Pareto plots of a model (after aggregate): speedup and MACs against FID and "
             "LPIPS, every method and peer a point")
    s.add_argument("--root", default="results")
    s.add_argument("--out", required=True)
    s = verb("verdict", cmd_verdict, "the claim's verdict of a model (after aggregate): each budget target on or off "
             "the Pareto front, and which differences to the rows matched to it the intervals resolve")
    s.add_argument("--root", default="results")
    s.add_argument("--out", required=True)
    s = verb("grid", cmd_grid, "a PNG of a model's first samples, one row per method (after generate)")
    s.add_argument("--methods", help="comma-separated variants (default: the model's methods)")
    s.add_argument("-n", type=int, default=12, help="samples per row")
    s.add_argument("--real", action="store_true",
                   help="the proxies: first a row of real renders of the samples' conditions")
    s.add_argument("--root", default="results")
    s.add_argument("--out", required=True)
    s = verb("prepare-coco", cmd_prepare_coco, "the COCO-30k caption list (line i = sample i, with its SHA-256) "
             "and its reference images, centre-cropped and resized, from local COCO files", model=False)
    s.add_argument("--annotations", required=True, help="COCO captions JSON (e.g. captions_train2017.json)")
    s.add_argument("--images", required=True, help="folder of that split's images")
    s.add_argument("--n", type=int, default=30_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--res", type=int, nargs="+", default=[256, 512], help="reference resolutions")
    s.add_argument("--resources", default="resources")
    s.add_argument("--force", action="store_true", help="replace a list prepared from other inputs")
    verb("doctor", cmd_doctor, "list, table by table, the weights, datasets and reference files real runs need, "
         "present or missing with how to get them; exit 1 while anything is missing", model=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading never downloads implicitly (see models/weights.py)
    try:
        return args.fn(args) or 0
    except (config_mod.ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"dsbench {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full results folder: one line naming the file (dsbench.io.WriteError)
        where = f"{e.filename}: " if e.filename and str(e.filename) not in str(e) else ""
        print(f"dsbench {args.verb}: error: {where}{e.strerror if where else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
