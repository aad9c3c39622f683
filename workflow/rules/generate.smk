rule generate_shard:
    input: lambda wc: method_inputs(wc.model, [wc.method])
    output: "results/samples/{model}/{method}/shard_{shard}.npz"
    params: config=scoped_config("generate_shard"), scope=scoped_trigger("generate_shard")
    resources: gpu=1
    log: "logs/generate/{model}/{method}/{shard}.log"
    shell: "dsbench generate --config {params.config:q} --model {wildcards.model} --method {wildcards.method} --shard {wildcards.shard} > {log} 2>&1"


rule reference_stats:
    output: "results/reference/{model}.npz"
    params: config=scoped_config("reference_stats"), scope=scoped_trigger("reference_stats")
    resources: gpu=1
    log: "logs/reference/{model}.log"
    shell: "dsbench reference --config {params.config:q} --model {wildcards.model} --out {output} > {log} 2>&1"
