# SparseDiT fine-tuning (dsbench/sparsedit_train.py): the model's DiT converted by a sparsedit variant's plan
# and fine-tuned with its `finetune:` block. Nothing in the default DAG or the smoke asks for these outputs,
# so nothing trains unless named:
#   snakemake --cores 1 results/sparsedit/proxy_dit/<variant>        (or: finetune_sparsedit_all)
# A run resumes from results/sparsedit/<model>/<variant>.ckpt/ (Snakemake's removal of an incomplete output
# leaves it). A variant samples with the result when its `weights:` points at that folder; a generating
# rule that should train it first can take `sparsedit_inputs(model, methods)` as input.


def sparsedit_variants(model):
    return [m for m in model_methods(model) if config["methods"][m]["method"] == "sparsedit"]


def sparsedit_inputs(model, methods):
    """The fine-tuned folders the given variants of `model` read that this workflow produces."""
    return [w for m in methods if config["methods"][m]["method"] == "sparsedit"
            for w in [config["methods"][m].get("weights")] if w == f"results/sparsedit/{model}/{m}"]


rule finetune_sparsedit:
    output: directory("results/sparsedit/{model}/{method}")
    params: config=scoped_config("finetune_sparsedit"), scope=scoped_trigger("finetune_sparsedit")
    # One thread for the CPU proxies (the bits depend on the thread count; their provenance records it).
    threads: 1
    resources: gpu=lambda wildcards: int(config["models"][wildcards.model]["source"] == "real")
    log: "logs/finetune_sparsedit/{model}/{method}.log"
    shell: "OMP_NUM_THREADS={threads} dsbench finetune-sparsedit --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --out {output} > {log} 2>&1"


rule finetune_sparsedit_all:
    input: [f"results/sparsedit/{m}/{v}" for m in MODELS for v in sparsedit_variants(m)]
