localrules: schedule_heatmap, schedules

# DiffSparse schedules: trained per (model, variant) and consumed by generate / macs / latency as a
# static plan. A variant is trained when a table needs it, or by name:
#   snakemake --cores 2 results/schedules/proxy_pixart/diffsparse_r43.safetensors


def diffsparse_variants(model):
    return [m for m in model_methods(model) if config["methods"][m]["method"] == "diffsparse"]


def trained_variants(model):
    """The DiffSparse variants the DAG trains: those without a `schedule:` file of their own (a committed
    schedule, models/proxies/schedules/, is read as it is)."""
    return [m for m in diffsparse_variants(model) if not config["methods"][m].get("schedule")]


def given_schedule(path):
    """A variant's `schedule:` path as the jobs resolve it: from the working directory, else, for a path
    under models/, the committed file inside the repository (methods/paths.py, the one rule)."""
    from methods.paths import committed_path

    return str(committed_path(path))


def schedule_inputs(model, methods):
    """The schedules the given variants of `model` sample with: its own, or an explicit `schedule:` path
    (another model's, for transfer across resolutions: the DAG trains it; a committed or user's file must exist)."""
    return [given_schedule(config["methods"][m]["schedule"]) if config["methods"][m].get("schedule")
            else f"results/schedules/{model}/{m}.safetensors"
            for m in methods if config["methods"][m]["method"] == "diffsparse"]


def sparsedit_inputs(model, methods):
    """The provenance.json of the fine-tuned SparseDiT weights the given variants sample with, where it exists:
    new weights then rerun what read the old ones. A missing folder is not an input (nothing here makes it):
    the job fails with the command that fine-tunes it, and `snakemake -n` still plans."""
    import os

    paths = [os.path.join(config["methods"][m]["weights"], "provenance.json") for m in methods
             if config["methods"][m]["method"] == "sparsedit" and config["methods"][m].get("weights")]
    return [p for p in paths if os.path.isfile(p)]


CALIBRATED = {"diffusers_magcache"}  # peers that read a calibration (methods/peers: `calibrated`)


def calibration_inputs(model, methods):
    """The calibration files the given peer variants read: rule calibrate_peer makes them, unless the variant
    gives its ratios (mag_ratios) or its own file (calibration)."""
    out = []
    for m in methods:
        v = config["methods"][m]
        if v["method"] in CALIBRATED and v.get("mag_ratios") is None:
            out.append(v.get("calibration") or f"results/peers/{model}/{m}.json")
    return out


def artefact_inputs(model, methods):
    """The files the given variants of `model` are built from: DiffSparse schedules, SparseDiT weights,
    peers' calibrations."""
    return schedule_inputs(model, methods) + sparsedit_inputs(model, methods) + calibration_inputs(model, methods)


def matched_inputs(model, methods):
    """The budget matches (rule match_budget) of the given variants that have a `match` block."""
    return [f"results/matched/{model}/{m}.json" for m in methods if config["methods"][m].get("match")]


def method_inputs(model, methods):
    """Every artefact the given variants of `model` read: their files and their budget matches."""
    return artefact_inputs(model, methods) + matched_inputs(model, methods)


rule match_budget:
    # A variant's `match` setting bisected to its target's counted MACs (dsbench/matching.py); every job
    # that samples, counts or times the variant reads the value from this file.
    input: lambda wc: artefact_inputs(wc.model, [wc.method, config["methods"][wc.method]["match"]["target"]])
    output: "results/matched/{model}/{method}.json"
    params: config=scoped_config("match_budget"), scope=scoped_trigger("match_budget")
    log: "logs/match_budget/{model}/{method}.log"
    shell: "dsbench match-macs --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --out {output} --force > {log} 2>&1"


rule calibrate_peer:
    # MagCache's magnitude ratios, with diffusers' own calibration mode (dsbench/peer_calibration.py)
    output: "results/peers/{model}/{method}.json"
    params: config=scoped_config("calibrate_peer"), scope=scoped_trigger("calibrate_peer")
    resources: gpu=1
    log: "logs/calibrate_peer/{model}/{method}.log"
    shell: "dsbench calibrate-peer --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --out {output} --force > {log} 2>&1"


rule train_schedule:
    output:
        schedule="results/schedules/{model}/{method}.safetensors",
        provenance="results/schedules/{model}/{method}.json",
    params: config=scoped_config("train_schedule"), scope=scoped_trigger("train_schedule")
    resources: gpu=1
    threads: workflow.cores
    log: "logs/train_schedule/{model}/{method}.log"
    shell: "OMP_NUM_THREADS={threads} dsbench train-schedule --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --out {output.schedule} --force > {log} 2>&1"


rule schedule_heatmap:
    # Figure 3 of the paper from any trained schedule, drawn as the paper does: x = layers, y = steps 1 … T-1
    # (step 0 always computes in full), colour = sparsity. `dsbench heatmap --view steps` draws steps × blocks.
    input: lambda w: schedule_inputs(w.model, [w.method])
    output:
        report("results/figures/{model}/{method}_schedule.png", caption="../report/heatmap.rst",
               category="Figure 3 heatmaps", labels={"model": "{model}", "variant": "{method}"})
    params: config=scoped_config("heatmap"), scope=scoped_trigger("heatmap")
    log: "logs/heatmap/{model}/{method}.log"
    shell: "dsbench heatmap --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --out {output} > {log} 2>&1"


rule schedules:
    # Every DiffSparse schedule of the config (and its heatmap), without sampling anything.
    input:
        [f"results/schedules/{m}/{v}.safetensors" for m in MODELS for v in trained_variants(m)],
        [f"results/figures/{m}/{v}_schedule.png" for m in MODELS for v in diffsparse_variants(m)],
