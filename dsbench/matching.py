"""Budget-matched variants: a variant's `match` block names another variant of the same model and a
continuous setting of its own, and rule `match_budget` bisects that setting until the variant's counted
MACs (macs_c1) equal the target's within `tolerance`; every job that samples, counts or times the variant
then reads the matched value from results/matched/{model}/{variant}.json. So a table can put every row at
one budget (e.g. all at DiffSparse R = 43 %'s MACs ± 1 %) without a value copied into the config by hand.

    toca_at_r43:
      method: toca
      threshold: 3
      match: {target: diffsparse_r43, key: fresh_ratio, range: [0.0, 1.0], tolerance: 0.01}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

MATCH_KEY = "match"


@dataclass(frozen=True)
class MatchSpec:
    """target: the variant whose MACs to meet; key: this variant's setting to tune (a number the MACs
    move with monotonically: ToCa's fresh_ratio, a cache's threshold, DiffSparse's ratio); range: [lo, hi]
    to bisect in, which must bracket the target's MACs; tolerance: the relative MAC error accepted
    (a run-time method's counted MACs move in steps: the closest value is kept and its error recorded);
    iterations: the most bisection steps (12 halve a range 4096 times; each counts real runs for a
    method that decides at run time)."""
    target: str
    key: str
    range: tuple[float, float]
    tolerance: float = 0.01
    iterations: int = 12

    @classmethod
    def of(cls, spec, where: str) -> "MatchSpec":
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be a mapping {{target, key, range, tolerance}}, got {spec!r}")
        unknown = sorted(set(spec) - {"target", "key", "range", "tolerance", "iterations"})
        missing = sorted({"target", "key", "range"} - set(spec))
        if unknown or missing:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"unknown setting(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])))
        for name in ("target", "key"):
            if not isinstance(spec[name], str) or not spec[name]:
                raise ValueError(f"{where}.{name}: must be a variant or setting name, got {spec[name]!r}")
        r = spec["range"]
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_number(x) for x in r) and r[0] < r[1]):
            raise ValueError(f"{where}.range: must be [lo, hi] with lo < hi, got {r!r}")
        tol = spec.get("tolerance", 0.01)
        if not _is_number(tol) or not 0 < tol < 0.5:
            raise ValueError(f"{where}.tolerance: must be a number in (0, 0.5), got {tol!r}")
        it = spec.get("iterations", 12)
        if not isinstance(it, int) or isinstance(it, bool) or not 1 <= it <= 60:
            raise ValueError(f"{where}.iterations: must be an integer in [1, 60], got {it!r}")
        return cls(spec["target"], spec["key"], (float(r[0]), float(r[1])), float(tol), it)

    def as_dict(self) -> dict:
        return {**asdict(self), "range": list(self.range)}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def matched_path(model: str, variant: str, root: str | Path = "results") -> Path:
    return Path(root) / "matched" / model / f"{variant}.json"


def without_match(entry: dict) -> dict:
    """A variant's settings for its method's Config (the `match` block is the workflow's, not the method's)."""
    return {k: v for k, v in entry.items() if k != MATCH_KEY}


def read_matched(model: str, variant: str, spec: MatchSpec, root: str | Path = "results") -> dict:
    """The matched value's record, checked to be this spec's (target, key, range, tolerance)."""
    from dsbench.io import read_json

    path = matched_path(model, variant, root)
    if not path.is_file():
        raise FileNotFoundError(f"{variant} is matched to {spec.target}'s MACs but {path} is missing; make it with "
                                f"`snakemake --cores 2 {path}` (rule match_budget)")
    found = read_json(path)
    if found.get("spec") != spec.as_dict():
        raise ValueError(f"{path} was matched under another spec ({found.get('spec')} != {spec.as_dict()}); "
                         "match again (rule match_budget)")
    return found


def budget_groups(config: dict, model: str) -> tuple[dict[str, list[str]], list[str]]:
    """(budget target -> the variants of `model` matched to it, the other accelerated variants): the
    latter sit at the budget their integer knob gives (FORA's interval, a step count)."""
    methods = config["models"][model]["methods"]
    matched: dict[str, list[str]] = {}
    for v in methods:
        spec = config["methods"][v].get(MATCH_KEY)
        if spec:
            matched.setdefault(spec["target"], []).append(v)
    nearest = [v for v in methods if v != "none" and v not in matched
               and not config["methods"][v].get(MATCH_KEY)]
    return matched, nearest
