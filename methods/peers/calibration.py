"""The calibration file of a calibrated peer (MagCache's magnitude ratios): where the workflow keeps it and
how it is read back. No torch here: the Snakefile and `dsbench doctor` read it too."""
from __future__ import annotations

import json
from pathlib import Path


def calibration_path(model: str, variant: str, root: str | Path = "results") -> Path:
    """results/peers/{model}/{variant}.json, written by rule calibrate_peer."""
    return Path(root) / "peers" / model / f"{variant}.json"


def read_calibration(path: str | Path | None, method: str) -> list[float]:
    """The ratios of a calibration file, or a one-line error that names the command that makes it."""
    if path is None:
        raise ValueError(f"{method}: no mag_ratios and no calibration file given")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{method}: calibration {path} is missing; make it with "
                                f"`snakemake --cores 1 {path}` (rule calibrate_peer) or `dsbench calibrate-peer`")
    try:
        data = json.loads(path.read_text())
        ratios = [float(v) for v in data["mag_ratios"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{method}: calibration {path} is corrupt ({type(e).__name__}: {e}); delete it and "
                         "calibrate again") from None
    if not ratios:
        raise ValueError(f"{method}: calibration {path} holds no ratios")
    return ratios


def read_calibration_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text()).get("calibrated_for", {})
