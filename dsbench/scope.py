"""Rerun scope: the slice of the config each workflow rule's output depends on. No torch import (the
Snakefile uses it).

Every rule passes its verb one slice (`params: config`) and Snakemake's params trigger sees exactly the
settings the output depends on (`params: scope`), so changing `latency.*` reruns latency and what reads
it, not 30,000 samples. A slice is a config cut down to the keys one rule kind may read, plus
``"_scope": {"rule": <kind>, "untracked": [...]}``:

* tracked keys: the output depends on them; they are the rerun trigger (:func:`trigger`).
* untracked keys: execution settings the verb needs but whose change leaves the output the same (a
  sample's seed and condition never depend on `batch_size`; `resources` where the job reads no file from
  it). The rules pass the slice as a params function of `output`, which Snakemake leaves out of the
  params trigger, and the trigger as a second, tracked param.

The verbs validate a slice without the schema's `required` keys (the full config was validated, defaults
filled, when the workflow was loaded; a slice fills none, so an omitted key is never silently defaulted)
and wrap it (:func:`guard`): reading a key outside the rule's scope raises :class:`ScopeError` naming the
key and this module, instead of running on a value the trigger does not cover.
"""
from __future__ import annotations

import copy
import json
from typing import Any

SCOPE_KEY = "_scope"
# The model settings a sample's pixels depend on (also its recorded identity: dsbench/cell.py sample_identity).
# Not batch_size (a sample's seed and condition do not depend on it), num_samples, reference or allow_partial.
SAMPLING = ("source", "weights", "steps", "scheduler", "guidance_scale", "guided_channels", "dtype", "dataset")
# Where the sampled model runs and what seeds and splits its samples: top-level keys every sampling job reads.
RUN = ("seed", "shard_size", "device", "dtype")


class ScopeError(KeyError, ValueError):
    """A verb read a config key outside its rule's slice (ValueError: `dsbench` reports it as an error)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _dataset_under_resources(dataset: str | None) -> bool:
    from dsbench.conditions import DATASET_FILES

    return dataset in DATASET_FILES


def _model(config: dict, model: str, keys, methods: list[str]) -> dict:
    m = config["models"][model]
    return {**{k: m[k] for k in keys if k in m}, "methods": list(methods)}


def _slice(rule: str, config: dict, top, model: str | None, model_keys=(), methods: list[str] = (),
           untracked=(), **extra) -> dict:
    s: dict[str, Any] = {k: copy.deepcopy(config[k]) for k in top if k in config}
    if model is not None:
        s["models"] = {model: _model(config, model, model_keys, methods)}
        s["methods"] = {v: copy.deepcopy(config["methods"][v]) for v in methods}
    s.update(extra)
    s[SCOPE_KEY] = {"rule": rule, "untracked": sorted(untracked),
                    "allowed": {"top": sorted({*top, *extra, *(("models", "methods") if model else ())}),
                                "model": sorted({*model_keys, "methods"})}}
    if "metrics" in extra:  # a part of metrics: only those keys
        s[SCOPE_KEY]["allowed"]["metrics"] = sorted(extra["metrics"])
    return s


# ---- one function per rule kind ---------------------------------------------------------------------

def generate_shard(config: dict, model: str, method: str, shard: int) -> dict:
    """One shard of one cell. Tracked: the model's sampling settings (SAMPLING), the variant's settings,
    seed (sample i's seed), shard_size and the shard's end (which samples this shard holds), device and
    dtype (the arithmetic). `num_samples` becomes the shard's end, min(N, (k+1) * shard_size), so growing
    the sample count regenerates only the last, partial shard (conditions are fixed by index; VBench
    suites keep N: their sample count is the suite's). Untracked: batch_size (top-level and the model's:
    a sample's seed and condition do not depend on it), and `resources` unless the dataset's file lives
    there (coco30k, partiprompts, vbench): weights come from the hub cache, `weights` or the committed
    proxies, never from resources, and a moved resources folder must not regenerate 30,000 images."""
    from dsbench.conditions import VBENCH_DATASETS

    m = config["models"][model]
    s = _slice("generate_shard", config, (*RUN, "batch_size", "resources"), model,
               (*SAMPLING, "num_samples", "batch_size"), [method],
               untracked=["batch_size", f"models.{model}.batch_size"]
               + ([] if _dataset_under_resources(m["dataset"]) else ["resources"]))
    if m["dataset"] not in VBENCH_DATASETS:
        s["models"][model]["num_samples"] = min(m["num_samples"], (int(shard) + 1) * config["shard_size"])
    return s


def reference_stats(config: dict, model: str) -> dict:
    """A model's FID reference. Tracked: the reference settings (reference, reference_samples, and
    num_samples, the held-out count's default), the FID network (metrics.fid_network, fid_mode), resources
    (reference images and network weights live there), and, because the `heldout` reference samples the
    unaccelerated model on held-out seeds, the sampling settings (SAMPLING, seed, shard_size, device,
    dtype). Untracked: batch_size."""
    return _slice("reference_stats", config, (*RUN, "batch_size", "resources"), model,
                  (*SAMPLING, "num_samples", "reference", "reference_samples", "allow_partial", "batch_size"),
                  ["none"], untracked=["batch_size", f"models.{model}.batch_size"],
                  metrics={k: config["metrics"][k] for k in ("fid_network", "fid_mode") if k in config["metrics"]})


def evaluate(config: dict, model: str, method: str) -> dict:
    """One cell's metrics. Tracked: every metrics setting, fidelity_samples, the variant and `none` (its
    samples are the fidelity baseline), the model's reference settings and sample count, resources (metric
    weights, datasets, references), shard_size (how shards are read), and the sampling settings the shards'
    recorded identity is checked against (they change the samples anyway). Not latency, batch_size, tables."""
    return _slice("evaluate", config, (*RUN, "resources", "metrics", "fidelity_samples"), model,
                  (*SAMPLING, "num_samples", "reference", "reference_samples", "allow_partial"),
                  list(dict.fromkeys(["none", method])))


def macs(config: dict, model: str, method: str) -> dict:
    """MACs of one cell: the model and the variant. Tracked: SAMPLING, num_samples (methods that decide at
    run time count min(N, 8) real samples), seed, device, dtype. Not metrics, latency, batch_size.
    Untracked: resources unless the dataset lives there (run-time methods read conditions)."""
    return _slice("macs", config, ("seed", "device", "dtype", "resources"), model, (*SAMPLING, "num_samples"),
                  [method], untracked=[] if _dataset_under_resources(config["models"][model]["dataset"])
                  else ["resources"])


def match_budget(config: dict, model: str, method: str) -> dict:
    """A budget match (dsbench/matching.py): the MACs of the variant and of its target, so what `macs`
    tracks for both (SAMPLING, num_samples, seed, device, dtype) and both variants' settings."""
    target = config["methods"][method]["match"]["target"]
    return _slice("match_budget", config, ("seed", "device", "dtype", "resources"), model,
                  (*SAMPLING, "num_samples"), [method, target],
                  untracked=[] if _dataset_under_resources(config["models"][model]["dataset"]) else ["resources"])


def latency(config: dict, model: str) -> dict:
    """Every variant of a model timed in one process. Tracked: latency.*, the model's sampling settings and
    all its variants, seed, device, dtype. Untracked: num_samples (conditions are the first
    latency.batch_size ones) and resources unless the dataset lives there."""
    methods = config["models"][model]["methods"]
    return _slice("latency", config, ("seed", "device", "dtype", "resources", "latency"), model,
                  (*SAMPLING, "num_samples"), methods,
                  untracked=[f"models.{model}.num_samples"]
                  + ([] if _dataset_under_resources(config["models"][model]["dataset"]) else ["resources"]))


def aggregate(config: dict, model: str) -> dict:
    """A model's CSV: its inputs are the JSON files; from the config it reads the model entry (all of it:
    the provenance's config_hash covers it), the variants, and seed, device and dtype (provenance columns,
    and each cell's sample identity, checked against the digest its MACs and metrics files record)."""
    m = config["models"][model]
    return _slice("aggregate", config, ("seed", "device", "dtype"), model,
                  (*SAMPLING, *(k for k in m if k != "methods")), m["methods"])


def render(config: dict, table: str) -> dict:
    """A table: its own entry and its model's guidance_scale (CFG branches of the derived MACs columns)."""
    t = config["tables"][table]
    s = {"tables": {table: copy.deepcopy(t)},
         "models": {t["model"]: {"guidance_scale": config["models"][t["model"]]["guidance_scale"]}},
         SCOPE_KEY: {"rule": "render_table", "untracked": [],
                     "allowed": {"top": ["models", "tables"], "model": ["guidance_scale"]}}}
    return s


def train_schedule(config: dict, model: str, method: str) -> dict:
    """A DiffSparse schedule: the model (SAMPLING, train_dataset) and its variant, seed, device, dtype, and
    the LPIPS network of the distillation loss. Untracked: resources unless the training captions live there."""
    m = config["models"][model]
    return _slice("train_schedule", config, ("seed", "device", "dtype", "resources"), model,
                  (*SAMPLING, "train_dataset"), [method],
                  untracked=[] if _dataset_under_resources(m.get("train_dataset", m["dataset"])) else ["resources"],
                  metrics={"lpips_network": config["metrics"]["lpips_network"]})


def finetune_sparsedit(config: dict, model: str, method: str) -> dict:
    """A SparseDiT fine-tune: the source DiT (the model's source and weights), the variant (its plan and its
    finetune block), seed (tiny source weights) and device (real weights train there). Untracked: the
    variant's `weights` (where sampling reads the result from) and, for weights that train on the CPU
    (proxy, tiny), the device."""
    cpu = config["models"][model]["source"] != "real"
    return _slice("finetune_sparsedit", config, ("seed", "device"), model, ("source", "weights"), [method],
                  untracked=[f"methods.{method}.weights", *(["device"] if cpu else [])])


def calibrate_peer(config: dict, model: str, method: str) -> dict:
    """A peer's calibration (MagCache's ratios): the model's sampling and its training conditions, seed,
    device, dtype, and the variant. Untracked: the variant's run-time knobs (thresholds), which the
    calibration run does not read."""
    m = config["models"][model]
    knobs = ("threshold", "max_skip_steps", "retention_ratio")
    return _slice("calibrate_peer", config, ("seed", "device", "dtype", "resources"), model,
                  (*SAMPLING, "train_dataset"), [method],
                  untracked=[*(f"methods.{method}.{k}" for k in knobs),
                             *([] if _dataset_under_resources(m.get("train_dataset", m["dataset"])) else ["resources"])])


def heatmap(config: dict, model: str, method: str) -> dict:
    """Figure 3 of a schedule (its file is the input): the model's layout (SAMPLING) and the variant."""
    return _slice("schedule_heatmap", config, ("seed", "device", "dtype"), model, SAMPLING, [method])


def grid(config: dict, model: str) -> dict:
    """A model's sample grid: which shards hold the first samples (num_samples, shard_size), its variants
    (rows) and dataset (the proxies' real row), and what each row's shards are checked against before they
    are shown (their sample identity: SAMPLING, seed, device, dtype)."""
    return _slice("sample_grid", config, RUN, model, (*SAMPLING, "num_samples"),
                  config["models"][model]["methods"])


def verdict(config: dict, model: str) -> dict:
    """A model's claim verdict: its CSV (the input) and which variants are matched to which budget."""
    return _slice("claim_verdict", config, (), model, (), config["models"][model]["methods"])


def pareto(config: dict, model: str) -> dict:
    """A model's Pareto plots: its CSV (the input) and which library each variant's method belongs to."""
    return _slice("pareto", config, (), model, (), config["models"][model]["methods"])


# ---- the trigger, and the verbs' side -----------------------------------------------------------------

def trigger(s: dict) -> dict:
    """The tracked part of a slice: without its untracked keys, marked with the rule kind only."""
    t = copy.deepcopy({k: v for k, v in s.items() if k != SCOPE_KEY})
    for path in s[SCOPE_KEY]["untracked"]:
        *parents, last = path.split(".")
        d = t
        for p in parents:
            d = d.get(p, {})
        d.pop(last, None)
    return {**t, SCOPE_KEY: s[SCOPE_KEY]["rule"]}


def dumps(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True)


def is_slice(config: dict) -> bool:
    return isinstance(config, dict) and SCOPE_KEY in config


class ScopedDict(dict):
    """A mapping that raises ScopeError for a key outside `allowed` (None: any key), on [] and .get alike."""

    def __init__(self, *args, allowed=None, where="config", rule="?", **kw):
        super().__init__(*args, **kw)
        self._allowed, self._where, self._rule = allowed, where, rule

    def _refuse(self, key):
        if self._allowed is not None and key not in self._allowed:
            raise ScopeError(f"{self._where}.{key} is outside the config slice of rule {self._rule!r}: its "
                             f"outputs would not rerun when it changes. Add it to that rule's function in "
                             f"dsbench/scope.py (in scope: {', '.join(sorted(self._allowed))})")

    def __missing__(self, key):
        self._refuse(key)
        raise KeyError(key)

    def get(self, key, default=None):
        if key in self:
            return dict.__getitem__(self, key)
        self._refuse(key)
        return default

    def __deepcopy__(self, memo):
        return ScopedDict({k: copy.deepcopy(v, memo) for k, v in self.items()}, allowed=self._allowed,
                          where=self._where, rule=self._rule)


def _strip_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_required(v) for k, v in schema.items() if k not in ("required", "minProperties")}
    if isinstance(schema, list):
        return [_strip_required(v) for v in schema]
    return schema


def validate(config: dict) -> dict:
    """Validate a slice: the schema's types and enums, no `required` (a slice omits what its rule does not
    read) and no defaults filled; the scope marker is checked and the slice guarded (see module doc)."""
    import jsonschema
    import yaml

    from dsbench.config import SCHEMA, ConfigError, _path

    marker = config.get(SCOPE_KEY) if not isinstance(config, ScopedDict) else dict.get(config, SCOPE_KEY)
    if not isinstance(marker, dict) or "rule" not in marker or "allowed" not in marker:
        raise ConfigError(f"invalid config at {SCOPE_KEY}: a scope marker names its rule and allowed keys")
    plain = json.loads(json.dumps({k: v for k, v in config.items() if k != SCOPE_KEY}))
    schema = yaml.safe_load(SCHEMA.read_text())
    schema = {**_strip_required({k: v for k, v in schema.items() if k != "$defs"}),
              "$defs": {k: (v if k == "method" else _strip_required(v)) for k, v in schema["$defs"].items()}}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(plain),
                    key=lambda e: (len(e.absolute_path), _path(e)))
    if errors:
        e = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"invalid config slice ({marker['rule']}) at {_path(e)}: {e.message}")
    return config if isinstance(config, ScopedDict) else guard(config)


def guard(config: dict) -> ScopedDict:
    """The slice as ScopedDicts: top level, each model entry and `metrics` refuse keys outside the scope."""
    marker = config[SCOPE_KEY]
    rule, allowed = marker["rule"], marker["allowed"]
    out = ScopedDict({k: v for k, v in config.items()}, allowed={*allowed["top"], SCOPE_KEY}, where="config",
                     rule=rule)
    if "models" in out:
        out["models"] = ScopedDict({name: ScopedDict(m, allowed=set(allowed["model"]), where=f"models.{name}",
                                                     rule=rule) for name, m in out["models"].items()},
                                   where="models", rule=rule)
    if "metrics" in allowed and isinstance(out.get("metrics"), dict):
        out["metrics"] = ScopedDict(out["metrics"], allowed=set(allowed["metrics"]), where="metrics", rule=rule)
    return out
