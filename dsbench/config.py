"""Load and validate the experiment matrix (config.yaml / tests/smoke.yaml). No torch import here:
the Snakefile and `dsbench doctor` use it.

jsonschema checks the shape (workflow/schemas/config.schema.yaml, the same file Snakemake validates
with); `check_references` checks what a schema cannot: that names used in one section exist in another.
Every error names the key at fault.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# Reference kinds whose data this harness generates itself (nothing under resources/): the unaccelerated
# model on held-out seeds, and the proxies' procedural shapes (as FID statistics or as an ADM-format batch).
GENERATED_REFERENCES = ("heldout", "shapes", "shapes_adm")
# A table's columns where its config names none (`dsbench render`).
DEFAULT_TABLE_COLUMNS = ("macs_c1_T", "macs_total_T", "speedup", "fid", "clip", "psnr", "lpips")


class ConfigError(ValueError):
    pass


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate in place (filling schema defaults) and return the config; raise ConfigError naming the key."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    base = jsonschema.Draft202012Validator
    # Fill `default:` values the way snakemake.utils.validate(set_default=True) does.
    def set_defaults(validator, properties, instance, schema):
        for prop, sub in properties.items():
            if isinstance(instance, dict) and isinstance(sub, dict) and "default" in sub:
                instance.setdefault(prop, sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    Validator = jsonschema.validators.extend(base, {"properties": set_defaults})
    errors = sorted(Validator(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), _path(e)))
    if errors:
        e = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"invalid config at {_path(e)}: {e.message}")
    check_references(config)
    return config


def check_references(config: dict[str, Any]) -> None:
    methods = config["methods"]
    for name, model in config["models"].items():
        for v in model["methods"]:
            if v not in methods:
                raise ConfigError(f"invalid config at models.{name}.methods: unknown method variant {v!r} "
                                  f"(defined: {', '.join(sorted(methods))})")
        if "none" not in model["methods"] or methods["none"]["method"] != "none":
            raise ConfigError(f"invalid config at models.{name}.methods: every model needs the variant 'none' "
                              "(method: none): speedup and fidelity are measured against it")
        # Protocol sample counts hold where the numbers are meant to be the paper's: against real
        # reference data (tiny runs use `heldout`, the proxies `shapes`), unless allow_partial says otherwise.
        real_ref = model.get("reference", "heldout") not in GENERATED_REFERENCES
        if (real_ref or model["dataset"] == "partiprompts") and not model.get("allow_partial", False):
            from dsbench.datasets import DatasetError, check_protocol_count

            try:
                check_protocol_count(model["dataset"], model["num_samples"])
            except DatasetError as e:
                raise ConfigError(f"invalid config at models.{name}.num_samples: {e}") from None
    for tname, table in config["tables"].items():
        if table["model"] not in config["models"]:
            raise ConfigError(f"invalid config at tables.{tname}.model: unknown model {table['model']!r}")
        runs = config["models"][table["model"]]["methods"]
        columns = table.get("columns", list(DEFAULT_TABLE_COLUMNS))
        for field in ("paper_columns", "column_titles"):
            stray = [k for k in table.get(field, {}) if k not in columns]
            if stray:
                raise ConfigError(f"invalid config at tables.{tname}.{field}: {stray} not among the table's "
                                  f"columns {columns}")
        for i, row in enumerate(table["rows"]):
            if row["method"] not in runs:
                raise ConfigError(f"invalid config at tables.{tname}.rows.{i}.method: {row['method']!r} is not "
                                  f"run on {table['model']} (models.{table['model']}.methods)")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    return validate(config)


def load_arg(arg: str) -> dict[str, Any]:
    """A config given on the command line: a file path, or inline JSON (what the workflow rules pass)."""
    if arg.lstrip().startswith("{"):
        return validate(json.loads(arg))
    return load(arg)


def restrict(config: dict[str, Any], model: str, variant: str | None = None) -> dict[str, Any]:
    """The part of the config one model's jobs depend on (keeps Snakemake's params trigger precise);
    with `variant`, only that variant and `none` (what one cell's jobs read), so retuning one variant
    does not rerun (or retrain) the others."""
    m = config["models"][model]
    if variant is not None:
        m = {**m, "methods": list(dict.fromkeys(["none", variant]))}
    return {**{k: v for k, v in config.items() if k not in ("models", "methods", "tables")},
            "models": {model: m}, "methods": {v: config["methods"][v] for v in m["methods"]}, "tables": {}}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
