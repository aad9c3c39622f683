"""Settings blocks built from config dicts, the dataclass being the single source of each block's names,
types, defaults and documentation (its docstring).

`build(cls, data, where)` refuses unknown keys (listing the valid ones) and values of the wrong type, read
from the field annotations: `int` (not bool, not float), `float` (an int too, not bool), `bool`, `str`,
`X | None`, and `dict`; a dict field whose metadata names a dataclass (`field(metadata={"settings": C})`)
is a nested block, built the same way with C (and kept as the dict). Then the dataclass itself checks
ranges and choices in `__post_init__`, raising `SettingsError` through `invalid`. Every error names the
full key path, e.g. `methods.diffsparse_r43.toca.staleness_weight must be a number, got '0.25'`.
No torch here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class SettingsError(ValueError):
    """A bad setting. `path`: the full key path (`where` + key); `problem`: what is wrong with it."""

    def __init__(self, path: str, problem: str, sep: str = " "):
        self.path, self.problem, self.sep = path, problem, sep
        super().__init__(f"{path}{sep}{problem}")


def invalid(where: str, key: str, problem: str) -> SettingsError:
    """The error a `__post_init__` raises for its field `key`; `build` re-roots `where` to the full path."""
    err = SettingsError(f"{where}.{key}" if where else key, problem)
    err.key = key
    return err


def _describe(tp: Any) -> str | None:
    """What a value of annotation `tp` must be, in words (None: not checked)."""
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is dict or typing.get_origin(tp) is dict:
        return "a mapping"
    return None


def _matches(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is dict or typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    return True


def check_type(path: str, tp: Any, value: Any) -> None:
    """Raise SettingsError unless `value` fits annotation `tp` (unions, e.g. `int | None`, included)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
    else:
        options = (tp,)
    if any(_matches(t, value) if t is not type(None) else value is None for t in options):
        return
    words = [w for t in options if (w := "null" if t is type(None) else _describe(t))]
    raise SettingsError(path, f"must be {' or '.join(words)}, got {value!r}")


def fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """name -> (resolved annotation, field) of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, Any), f) for f in dataclasses.fields(cls)}


def build(cls: type, data: dict, where: str):
    """An instance of the settings dataclass `cls` from `data`; every error names `where`.key…"""
    if not isinstance(data, dict):
        raise SettingsError(where, f"must be a mapping, got {data!r}")
    spec = fields(cls)
    unknown = [k for k in data if k not in spec]
    if unknown:
        raise SettingsError(where, f"unknown setting(s) {sorted(map(str, unknown))}; "
                                   f"valid: {sorted(spec) or 'none'}", sep=": ")
    for key, value in data.items():
        tp, f = spec[key]
        path = f"{where}.{key}"
        check_type(path, tp, value)
        nested = f.metadata.get("settings")
        if nested is not None and value is not None:
            build(nested, value, path)
    try:
        return cls(**data)
    except SettingsError as e:
        key = getattr(e, "key", None)
        if key is None:
            raise
        raise invalid(where, key, e.problem) from None
