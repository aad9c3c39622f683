# Training the CPU proxies (models/proxy.py). Nothing else in the DAG depends on these outputs: the
# benchmark reads the committed, hash-checked weights in models/proxies/, so training only happens when
# asked (`snakemake --cores 2 train_proxies`). To use a retrained proxy, point the model's `weights:` at
# results/proxies/<name> or copy that folder over models/proxies/<name>.
PROXIES = ["shapes_classifier", "proxy_dit", "proxy_pixart"]


rule train_proxy:
    output: directory("results/proxies/{proxy}")
    wildcard_constraints: proxy="|".join(PROXIES)
    # One thread each, as the committed weights were trained (their provenance records it): CPU GEMM
    # reductions, so the bits, depend on the thread count; `--cores 2` trains two proxies side by side.
    threads: 1
    log: "logs/train_proxy/{proxy}.log"
    shell: "OMP_NUM_THREADS={threads} dsbench train-proxy --name {wildcards.proxy} --out {output} > {log} 2>&1"


rule train_proxies:
    input: expand("results/proxies/{proxy}", proxy=PROXIES)
