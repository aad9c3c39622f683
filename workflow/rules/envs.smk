# Virtual environments of the metrics that pin old libraries (ImageReward, VBench; metrics/external.py).
# The marker file is the output, not the venv folder: Snakemake deletes a job's outputs before rerunning
# it, and an update in place keeps the installed torch. `snakemake --cores 1 metric_envs` builds both.
from pathlib import Path

METRIC_ENVS = ["imagereward", "vbench"]
ENVS_ROOT = config.get("envs", {}).get("root", "envs")


rule metric_env:
    input: str(Path(workflow.basedir) / "envs" / "{env}.txt")
    output: f"{ENVS_ROOT}/.venv-{{env}}/.done"
    wildcard_constraints: env="|".join(METRIC_ENVS)
    params: pip_args=config.get("envs", {}).get("pip_args", "")
    log: "logs/envs/{env}.log"
    shell: "python -m metrics.external create {wildcards.env} --requirements {input:q} --root {ENVS_ROOT:q} --pip-args {params.pip_args:q} > {log} 2>&1"


rule metric_envs:
    input: expand(f"{ENVS_ROOT}/.venv-{{env}}/.done", env=METRIC_ENVS)
