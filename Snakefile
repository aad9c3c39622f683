# DiffSparse-Bench: generate -> measure -> aggregate -> render. Rules call `dsbench` verbs (no torch here).
#   snakemake --cores 8 table1
#   snakemake results/pixart_512.csv        (one model cell: every method x metric)
#   snakemake --configfile tests/smoke.yaml --replace-workflow-config --cores 2 smoke
#   snakemake --cores 2 train_proxies       (retrain the CPU proxies; only when asked)
#   snakemake --cores 2 results/schedules/proxy_pixart/diffsparse_r43.safetensors   (train one DiffSparse schedule)
#   snakemake --cores 1 results/sparsedit/proxy_dit/<variant>   (fine-tune one SparseDiT; only when asked)
from snakemake.utils import min_version

min_version("9.19")

# Snakemake's own loader would report a !!python tag in config.yaml only as "not valid JSON or YAML":
# read it strictly first (one line naming file, line and key; duplicate keys refused too).
from dsbench.config import check_files as _strict_read

_strict_read(["config.yaml"])

configfile: "config.yaml"
report: "workflow/report/workflow.rst"   # snakemake --report results/report.html (after a run)

include: "workflow/rules/common.smk"
include: "workflow/rules/schedules.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/proxies.smk"
include: "workflow/rules/sparsedit.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/envs.smk"

onstart:
    print_tables_served()   # which table each job serves (its model wildcard)
    doctor_first()   # stop before any job when a weight, dataset or reference is missing (workflow/rules/common.smk)
