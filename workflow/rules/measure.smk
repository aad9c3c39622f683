rule macs:
    # Counted while a whole sampling run executes: on the meta device (full size, no weights) for static
    # plans; methods that decide at run time (DiCache) count real runs and report the mean over samples.
    input: lambda wc: method_inputs(wc.model, [wc.method])
    output: "results/macs/{model}/{method}.json"
    params: config=scoped_config("macs"), scope=scoped_trigger("macs")
    log: "logs/macs/{model}/{method}.log"
    shell: "dsbench macs --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --device auto --out {output} > {log} 2>&1"


rule latency:
    # Every method of a model in one process, interleaved: speedups compare like with like. The job owns
    # all the cores (threads = --cores), so no other job runs beside it and slows some methods' rounds
    # (a smoke run's 25 % steps measured 10.5x against a MAC-ideal 4x so); its torch threads are as
    # many (OMP_NUM_THREADS, recorded in the JSON). gpu=1: no other GPU job beside it either.
    input: lambda wc: method_inputs(wc.model, model_methods(wc.model))
    output: "results/latency/{model}.json"
    params: config=scoped_config("latency"), scope=scoped_trigger("latency")
    threads: workflow.cores
    resources: gpu=1
    log: "logs/latency/{model}.log"
    shell: "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} dsbench latency --config {params.config:q} --model {wildcards.model} --out {output} > {log} 2>&1"


rule evaluate:
    # Video models (reference: vbench) have no image reference: VBench scores their videos.
    input:
        samples=lambda wc: shards(wc.model, wc.method),
        baseline=lambda wc: shards(wc.model, "none"),
        reference=lambda wc: reference_input(wc.model),
    output: "results/metrics/{model}/{method}.json"
    params:
        config=scoped_config("evaluate"),
        scope=scoped_trigger("evaluate"),
        reference=lambda wc, input: f"--reference {input.reference}" if input.reference else "",
    resources: gpu=1
    log: "logs/evaluate/{model}/{method}.log"
    shell: "dsbench evaluate --config {params.config:q} --model {wildcards.model} --method {wildcards.method} {params.reference} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        macs=lambda wc: expand("results/macs/{{model}}/{method}.json", method=model_methods(wc.model)),
        metrics=lambda wc: expand("results/metrics/{{model}}/{method}.json", method=model_methods(wc.model)),
        latency="results/latency/{model}.json",
    output:
        report("results/{model}.csv", caption="../report/results.rst", category="Results per model",
               labels={"model": "{model}"})
    params: config=scoped_config("aggregate"), scope=scoped_trigger("aggregate")
    log: "logs/aggregate/{model}.log"
    shell: "dsbench aggregate --config {params.config:q} --model {wildcards.model} --out {output} > {log} 2>&1"


rule alias_cell:
    # Short names for model cells: results/pixart_512.csv is results/pixart_alpha_512.csv.
    input: lambda wc: f"results/{ALIASES[wc.alias]}.csv"
    output: "results/{alias}.csv"
    wildcard_constraints: alias="|".join(ALIASES)
    shell: "cp {input} {output}"
