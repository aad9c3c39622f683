import json

from snakemake.utils import validate

from dsbench import config as dsconfig
from dsbench.samples import shard_ranges

validate(config, schema="../schemas/config.schema.yaml")
try:
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


def cell_config(wildcards):
    """The slice of the config a model's jobs depend on, as inline JSON (also the params rerun trigger)."""
    return json.dumps(dsconfig.restrict(config, wildcards.model), sort_keys=True)


def variant_config(wildcards):
    """The slice one cell's jobs depend on: the model, its variant and `none`."""
    return json.dumps(dsconfig.restrict(config, wildcards.model, wildcards.method), sort_keys=True)


def shards(model, method, root="results/samples"):
    n = len(shard_ranges(config["models"][model]["num_samples"], config["shard_size"]))
    return [f"{root}/{model}/{method}/shard_{k:05d}.npz" for k in range(n)]


def reference_input(model):
    """The FID/ADM reference an evaluation reads: none for video models (VBench needs no image reference)."""
    return [] if config["models"][model].get("reference") == "vbench" else [f"results/reference/{model}.npz"]


def model_methods(model):
    return config["models"][model]["methods"]


def table_output(name):
    return [f"results/tables/{name}.{ext}" for ext in ("csv", "md", "tex")]
