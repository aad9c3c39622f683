localrules: render_table, sample_grid, pareto, claim_verdict, claim, smoke, all


rule render_table:
    input:
        cell=lambda wc: f"results/{config['tables'][wc.table]['model']}.csv",
        # The paper's numbers ship with the code, so they are read from the repo even under --directory.
        paper=lambda wc: [p for p in [PAPER_DIR / f"{wc.table}.csv"] if p.exists()],
    output:
        csv=report("results/tables/{table}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}"}),
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    wildcard_constraints: table="table[0-9a-z_]+"
    params:
        config=scoped_config("render"),
        scope=scoped_trigger("render"),
        paper_dir=str(PAPER_DIR),
    log: "logs/render/{table}.log"
    shell: "dsbench render --config {params.config:q} --table {wildcards.table} --paper-dir {params.paper_dir:q} > {log} 2>&1"


# One target per configured table, named after it: `snakemake --cores 8 table1` (table2, table4, ...).
for _table in config["tables"]:
    rule:
        name: _table
        localrule: True
        input: table_output(_table)


rule sample_grid:
    # The first samples of every method of a model, one row each (the proxies add a row of real data).
    input: lambda wc: [s for m in model_methods(wc.model) for s in shards(wc.model, m)]
    output:
        report("results/grids/{model}.png", caption="../report/grid.rst", category="Sample grids",
               labels={"model": "{model}"})
    params: config=scoped_config("grid"), scope=scoped_trigger("grid")
    log: "logs/grid/{model}.log"
    shell: "dsbench grid --config {params.config:q} --model {wildcards.model} --real -n 12 --out {output} > {log} 2>&1"


rule pareto:
    # Speedup and MACs against FID and LPIPS, every method and peer a point, the Pareto front drawn.
    input: "results/{model}.csv"
    output:
        report("results/figures/{model}_pareto.png", caption="../report/pareto.rst", category="Pareto plots",
               labels={"model": "{model}"})
    wildcard_constraints: model="[^/]+"
    params: config=scoped_config("pareto"), scope=scoped_trigger("pareto")
    log: "logs/pareto/{model}.log"
    shell: "dsbench pareto --config {params.config:q} --model {wildcards.model} --out {output} > {log} 2>&1"


def claim_models():
    """The models with budget-matched variants (a `match` block): the ones the claim judges."""
    return [m for m in MODELS if any(config["methods"][v].get("match") for v in model_methods(m))]


rule claim_verdict:
    # Per budget target: on or off the Pareto front, and which differences the intervals resolve.
    input: "results/{model}.csv"
    output:
        report("results/claim/{model}.md", caption="../report/verdict.rst", category="Claim",
               labels={"model": "{model}"})
    wildcard_constraints: model="[^/]+"
    params: config=scoped_config("verdict"), scope=scoped_trigger("verdict")
    log: "logs/verdict/{model}.log"
    shell: "dsbench verdict --config {params.config:q} --model {wildcards.model} --out {output} > {log} 2>&1"


rule claim:
    # The paper's claim tested at matched budgets (configs/claim.yaml): every table, the Pareto plots and
    # each model's verdict, printed at the end.
    input:
        tables=[table_output(t) for t in config["tables"]],
        pareto=expand("results/figures/{model}_pareto.png", model=claim_models()),
        verdicts=expand("results/claim/{model}.md", model=claim_models()),
    shell: "cat {input.verdicts}"


rule smoke:
    # Every table of the configured (tiny or proxy) matrix, a sample grid per model, and the Figure-3
    # heatmap of every DiffSparse schedule (trained here or committed).
    input:
        [table_output(t) for t in config["tables"]],
        expand("results/grids/{model}.png", model=MODELS),
        expand("results/figures/{model}_pareto.png", model=MODELS),
        [f"results/figures/{m}/{v}_schedule.png" for m in MODELS for v in diffsparse_variants(m)],


rule all:
    default_target: True
    input: [table_output(t) for t in config["tables"]]
