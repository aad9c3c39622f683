"""Small helpers shared by the tests (tiny configs built from tests/tiny.yaml)."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from dsbench import config as config_mod

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides) -> dict:
    cfg = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    model_over = overrides.pop("model", {})
    cfg.update(overrides)
    cfg["models"]["tiny_pixart"].update(model_over)
    return config_mod.validate(cfg)


def with_dit(cfg: dict, **model_over) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["models"]["tiny_dit"] = {"source": "tiny", "steps": 4, "scheduler": "ddim", "guidance_scale": 1.5,
                                 "dataset": "imagenet_classes", "num_samples": 4, "methods": ["none", "steps_50"],
                                 **model_over}
    return config_mod.validate(cfg)


def with_wan(cfg: dict, **model_over) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["models"]["tiny_wan"] = {"source": "tiny", "steps": 4, "scheduler": "unipc_flow", "guidance_scale": 5.0,
                                 "dataset": "vbench_tiny", "num_samples": 45, "reference": "vbench",
                                 "methods": ["none", "steps_50"], **model_over}
    return config_mod.validate(cfg)


def with_flux(cfg: dict, **model_over) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["models"]["tiny_flux"] = {"source": "tiny", "steps": 4, "scheduler": "flow_euler", "guidance_scale": 0.0,
                                  "dataset": "tiny_prompts", "num_samples": 4, "methods": ["none", "steps_50"],
                                  **model_over}
    return config_mod.validate(cfg)
