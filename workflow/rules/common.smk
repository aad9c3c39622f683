import json
import sys

from snakemake.utils import validate

from dsbench import config as dsconfig
from dsbench import scope as dsscope
from dsbench.samples import shard_ranges

# Snakemake read its config files (the Snakefile's configfile:, every --configfile) with a lenient loader
# that lets a repeated key silently win: re-read each strictly first (dsbench.config.load_yaml).
try:
    dsconfig.check_files(workflow.configfiles)
except dsconfig.ConfigError as e:
    raise ValueError(str(e)) from None
validate(config, schema="../schemas/config.schema.yaml")
try:
    dsconfig.check_methods(config)      # each variant's settings, by its method's Config dataclass
    dsconfig.check_references(config)
except dsconfig.ConfigError as e:
    raise ValueError(str(e)) from None

MODELS = list(config["models"])
PAPER_DIR = dsconfig.REPO / "results" / "paper"
ALIASES = {"pixart_256": "pixart_alpha_256", "pixart_512": "pixart_alpha_512", "dit": "dit_xl_2_256"}

wildcard_constraints:
    model="|".join(MODELS),
    method="[a-z][a-z0-9_]*",
    shard=r"\d+",


# Each rule's params (dsbench/scope.py has one function per rule kind, and why each key is in):
#   config=scoped_config(kind): the slice its verb gets, a function of `output` so that Snakemake leaves it
#       out of the params rerun trigger (its untracked keys are execution settings such as batch_size);
#   scope=scoped_trigger(kind): the slice's tracked part, the settings the outputs depend on (the trigger).
SCOPE_WILDCARDS = {"generate_shard": ("model", "method", "shard"), "reference_stats": ("model",),
                   "evaluate": ("model", "method"), "macs": ("model", "method"), "latency": ("model",),
                   "aggregate": ("model",), "render": ("table",), "train_schedule": ("model", "method"),
                   "finetune_sparsedit": ("model", "method"), "calibrate_peer": ("model", "method"),
                   "heatmap": ("model", "method"), "grid": ("model",),
                   "pareto": ("model",), "match_budget": ("model", "method"),
                   "verdict": ("model",)}


def _slice(kind, wildcards):
    return getattr(dsscope, kind)(config, *(wildcards[w] for w in SCOPE_WILDCARDS[kind]))


def scoped_config(kind):
    def config_param(wildcards, output):  # `output`: not a params trigger (see above)
        return dsscope.dumps(_slice(kind, wildcards))
    return config_param


def scoped_trigger(kind):
    def scope_param(wildcards):
        return dsscope.dumps(dsscope.trigger(_slice(kind, wildcards)))
    return scope_param


def shards(model, method, root="results/samples"):
    n = len(shard_ranges(config["models"][model]["num_samples"], config["shard_size"]))
    return [f"{root}/{model}/{method}/shard_{k:05d}.npz" for k in range(n)]


def reference_input(model):
    """The FID/ADM reference an evaluation reads: none for video models (VBench needs no image reference) and
    for models evaluated without FID (reference: none)."""
    return [] if config["models"][model].get("reference") in ("vbench", "none") else [f"results/reference/{model}.npz"]


def model_methods(model):
    return config["models"][model]["methods"]


def print_tables_served():
    """One line per model at the start of a run: the tables its jobs (wildcard model=…) serve."""
    for model in MODELS:
        names = [t for t, spec in config["tables"].items() if spec["model"] == model]
        print(f"jobs with model={model} serve: {', '.join(names) if names else f'results/{model}.csv only'}",
              file=sys.stderr)


def table_output(name):
    return [f"results/tables/{name}.{ext}" for ext in ("csv", "md", "tex")]


# Rules whose jobs read weights, datasets, references or metric networks (aggregate, render, grids do not).
EXTERNAL_RULES = {"generate_shard", "reference_stats", "evaluate", "latency", "macs", "train_schedule",
                  "match_budget"}


def doctor_first():
    """The run's first step (the Snakefile's `onstart`: after the DAG is built, before any job, never in a
    dry run): `dsbench doctor` for the models of the jobs that will run. Something missing stops the run
    here with doctor's list, once, instead of every job failing on it in turn under keep-going."""
    import sys

    from dsbench import doctor

    models = {job.wildcards_dict["model"] for job in workflow.dag.needrun_jobs()
              if job.rule.name in EXTERNAL_RULES and "model" in job.wildcards_dict}
    ok, text = doctor.gate(config, models)
    if not ok:
        print(text + "\nGet these (or point the config at them), then run again; `snakemake -n` still plans.",
              file=sys.stderr, flush=True)
        raise SystemExit(1)


def check_cluster_environment():
    """A cluster profile that cannot work (an unset $DSBENCH_SLURM_*, or a SLURM profile beside
    profiles/default) stops the run, a dry run too, before any job with one line (dsbench/cluster.py)."""
    from dsbench.cluster import profile_error

    rs = workflow.resource_settings
    values = [(name, res.raw) for name, res in (rs.default_resources or {}).items()]
    for rule_name, resources in rs.overwrite_resources.items():
        values += [(f"{rule_name}.{name}", res.raw) for name, res in resources.items()]
    gpu_limit = rs.resources.get("gpu")
    message = profile_error(values, getattr(gpu_limit, "value", gpu_limit))
    if message:
        raise ValueError(message)


check_cluster_environment()
