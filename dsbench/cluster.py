"""Cluster profile settings that must come from the user's environment (profiles/slurm).

A profile value such as ``slurm_account: "$DSBENCH_SLURM_ACCOUNT"`` stays literal when the variable is
unset: sbatch would then fail job by job, or the plugin would guess an account. :func:`unset_variables`
finds such values so that the workflow stops before any job with one line naming them."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def unset_variables(values: Iterable[tuple[str, object]], environ: Mapping[str, str] | None = None,
                    prefix: str = "DSBENCH_") -> dict[str, list[str]]:
    """{variable: [the resource keys that name it]} for each ``$VAR`` (``VAR`` starting with ``prefix``) in
    a raw value that is unset or empty in ``environ``; in first-seen order."""
    env = os.environ if environ is None else environ
    missing: dict[str, list[str]] = {}
    for key, raw in values:
        for var in _VARIABLE.findall(raw if isinstance(raw, str) else ""):
            if var.startswith(prefix) and not env.get(var):
                keys = missing.setdefault(var, [])
                if key not in keys:
                    keys.append(key)
    return missing


def unset_message(missing: dict[str, list[str]], profile: str = "profiles/slurm") -> str:
    """One line: which variables to export, and the profile keys each one fills."""
    parts = []
    for var, keys in missing.items():
        by_resource: dict[str, list[str]] = {}
        for key in keys:                         # "slurm_account" or "<rule>.slurm_partition"
            rule, _, resource = key.rpartition(".")
            by_resource.setdefault(resource, []).append(rule)
        uses = [resource if rules == [""] else f"{resource} of {', '.join(r for r in rules if r)}"
                for resource, rules in by_resource.items()]
        parts.append(f"{var} ({'; '.join(uses)})")
    listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    return f"{profile}: set {listed} in the environment (export VAR=...); no job was submitted"


def profile_error(values: list[tuple[str, object]], gpu_limit: object,
                  environ: Mapping[str, str] | None = None) -> str | None:
    """The one line that stops a run whose cluster profile cannot work, else None.

    `values`: (key, raw value) of every default and per-rule resource ("<rule>.<name>" for the latter);
    `gpu_limit`: the global `gpu` resource limit. A ``$DSBENCH_*`` value left unset is refused first; then a
    SLURM profile (any slurm_* resource) beside profiles/default's `gpu=1`, which Snakemake loads with every
    --profile and which would run one GPU job at a time on the whole cluster."""
    missing = unset_variables(values, environ)
    if missing:
        return unset_message(missing)
    if gpu_limit == 1 and any(key.rpartition(".")[2].startswith("slurm_") for key, _ in values):
        return ("a SLURM profile was given with --profile, so profiles/default was loaded too and its "
                "`resources: gpu=1` would run one GPU job at a time on the whole cluster: run "
                "`snakemake --workflow-profile profiles/slurm ...` instead (no job was submitted)")
    return None
