# SparseDiT fine-tuning (dsbench/sparsedit_train.py): the model's DiT converted by a sparsedit variant's plan
# and fine-tuned with its `finetune:` block. Nothing in the default DAG or the smoke asks for these outputs,
# so nothing trains unless named:
#   snakemake --cores 1 results/sparsedit/proxy_dit/<variant>        (or: finetune_sparsedit_all)
# A run resumes from results/sparsedit/<model>/<variant>.ckpt/ (Snakemake's removal of an incomplete output
# leaves it). A variant samples with the result when its `weights:` points at that folder (its
# provenance.json is then an input of what samples with it: schedules.smk `sparsedit_inputs`).


def sparsedit_variants(model):
    return [m for m in model_methods(model) if config["methods"][m]["method"] == "sparsedit"]


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
