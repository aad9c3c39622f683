"""Load and validate the experiment matrix (config.yaml / tests/smoke.yaml). No torch import here:
the Snakefile and `dsbench doctor` use it.

Config files are read strictly (`load_yaml`): a key given twice in one mapping, or a tag asking for a
Python object (`!!python/...`), is refused with a one-line error naming the file and line(s); nothing but
plain YAML (or JSON) values is ever constructed. jsonschema checks the shape (workflow/schemas/
config.schema.yaml, the same file Snakemake validates with); `check_methods` builds every method
variant's settings with its dataclass (methods/settings.py: unknown keys and wrong types, nested blocks
included); `check_references` checks what a schema cannot: that names used in one section exist in
another. Every error names the key at fault.
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


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses tags it does not know (e.g. !!python/object/apply) with a clear
    message; duplicate keys are found on the composed node tree by `load_yaml` (with their key path)."""

    def construct_undefined(self, node):
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed: config files are "
            "plain YAML (no Python objects or custom tags)", node.start_mark)


StrictLoader.add_constructor(None, StrictLoader.construct_undefined)


def _check_duplicates(node, path: str, source: str, seen: set[int]) -> None:
    if id(node) in seen:          # an alias: already checked where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], tuple[int, int]] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key, yaml.ScalarNode):
                # resolved tag + text: `1` (int) and `"1"` (str) are different keys
                ident = (key.tag, key.value)
                at = (key.start_mark.line + 1, key.start_mark.column + 1)
                if ident in first:
                    where = f" in {path}" if path else " at the top level"
                    a, b = ((f"line {l}, column {c}" for l, c in (first[ident], at)) if first[ident][0] == at[0]
                            else (f"line {l}" for l, _ in (first[ident], at)))
                    raise ConfigError(f"{source}: duplicate key {key.value!r}{where}: {a} and {b} "
                                      "(the second would silently replace the first)")
                first[ident] = at
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            _check_duplicates(value, f"{path}.{name}" if path else name, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}.{i}" if path else str(i), source, seen)


def _no_duplicate_pairs(source: str):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ConfigError(f"{source}: duplicate key {k!r} (the second would silently replace the first)")
            out[k] = v
        return out
    return hook


def load_yaml(path: str | Path) -> Any:
    """The data of a YAML (or, by suffix, JSON) file, read strictly: a duplicate key (naming both lines),
    an unknown tag such as !!python/object (naming the line) or a syntax error raises a one-line
    ConfigError naming the file. Only plain values are constructed (safe loading)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_pairs(str(path)))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {e.lineno}: not valid JSON: {e.msg}") from None
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", str(path), set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(" ".join(f"{path}{where}: {what}".split())) from None
    except yaml.YAMLError as e:
        raise ConfigError(" ".join(f"{path}: {e}".split())) from None
    finally:
        loader.dispose()


def check_files(paths) -> None:
    """`load_yaml` each existing file of `paths` (what Snakemake read with its own, lenient, loader)."""
    for p in paths:
        if Path(p).is_file():
            load_yaml(p)


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate in place (filling schema defaults) and return the config; raise ConfigError naming the key.
    A workflow rule's slice (dsbench/scope.py: it carries a `_scope` marker) validates without `required`
    keys or defaults, and comes back guarded: reading a key outside its rule's scope is an error."""
    if isinstance(config, dict) and "_scope" in config:
        from dsbench import scope

        return scope.validate(config)
    import jsonschema

    schema = load_yaml(SCHEMA)
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
    check_methods(config)
    check_references(config)
    return config


def check_methods(config: dict[str, Any]) -> None:
    """Build every method variant's settings with its method's Config dataclass (the one place they are
    declared, methods/settings.py): unknown keys and wrong types, nested blocks included, raise a
    ConfigError naming methods.<variant>.<key>…"""
    from dsbench.matching import MATCH_KEY, MatchSpec
    from methods.registry import METHODS          # imports torch: only when a config is checked
    from methods.settings import SettingsError, build

    for variant, entry in config["methods"].items():
        name = entry.get("method")
        if name not in METHODS:
            raise ConfigError(f"invalid config at methods.{variant}.method: unknown method {name!r} "
                              f"(registered: {', '.join(sorted(METHODS))})")
        settings = {k: v for k, v in entry.items() if k not in ("method", MATCH_KEY)}
        try:
            build(METHODS[name].Config, settings, f"methods.{variant}")
            if MATCH_KEY in entry:  # the tuned setting exists and takes both ends of its range
                spec = MatchSpec.of(entry[MATCH_KEY], f"methods.{variant}.match")
                fields = METHODS[name].Config.__dataclass_fields__
                if spec.key not in fields:
                    raise ConfigError(f"invalid config at methods.{variant}.match.key: {name} has no setting "
                                      f"{spec.key!r} (settings: {', '.join(sorted(fields))})")
                for end in spec.range:
                    build(METHODS[name].Config, {**settings, spec.key: end}, f"methods.{variant}")
        except SettingsError as e:
            raise ConfigError(f"invalid config at {e.path}: {e.problem}") from None
        except ValueError as e:
            raise ConfigError(f"invalid config at methods.{variant}: {e}") from None


def check_references(config: dict[str, Any]) -> None:
    methods = config["methods"]
    for name, model in config["models"].items():
        for v in model["methods"]:
            if v not in methods:
                raise ConfigError(f"invalid config at models.{name}.methods: unknown method variant {v!r} "
                                  f"(defined: {', '.join(sorted(methods))})")
        for v in model["methods"]:
            spec = methods[v].get("match")
            target = spec.get("target") if isinstance(spec, dict) else None
            if target is not None and (target not in model["methods"] or target == v or "match" in methods[target]):
                raise ConfigError(f"invalid config at methods.{v}.match.target: {target!r} must be another, "
                                  f"unmatched variant of every model that runs {v} ({name} runs "
                                  f"{', '.join(model['methods'])})")
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
    config = load_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    return validate(config)


def load_arg(arg: str) -> dict[str, Any]:
    """A config given on the command line: a file path, or inline JSON (what the workflow rules pass)."""
    if arg.lstrip().startswith("{"):
        return validate(json.loads(arg))
    return load(arg)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
