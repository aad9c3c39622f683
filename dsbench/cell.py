"""A cell: one model × one method variant of a validated config, and everything built from it.

The one place that turns config entries into an adapter, a pipeline, a method and an attached engine,
so generation, MAC counting and latency all run the same code path.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from dsbench import conditions as conditions_mod

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_device(device: str) -> None:
    """A configured CUDA device this machine lacks is an error before any model is built."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device} is configured but this machine has no CUDA device "
                         "(torch.cuda.is_available() is False); set `device: cpu` in the config to run on the CPU")


@dataclass
class Cell:
    config: dict
    model: str
    method: str  # variant name (a key of config["methods"])

    def __post_init__(self):
        if self.model not in self.config["models"]:
            raise ValueError(f"unknown model {self.model!r} in this config; configured: "
                             f"{', '.join(self.config['models'])}")
        if self.method not in self.model_cfg["methods"]:
            raise ValueError(f"method variant {self.method!r} is not run on {self.model} "
                             f"(models.{self.model}.methods: {self.model_cfg['methods']})")

    @property
    def model_cfg(self) -> dict:
        return self.config["models"][self.model]

    @property
    def variant_cfg(self) -> dict:
        """The variant's entry as configured (a `match` block included)."""
        return self.config["methods"][self.method]

    @cached_property
    def method_cfg(self) -> dict:
        """The variant's settings as run: a budget-matched variant's `match` block replaced by the value
        rule match_budget found (dsbench/matching.py), so its samples' identity records that value."""
        from dsbench.matching import MATCH_KEY, MatchSpec, read_matched, without_match

        entry = self.variant_cfg
        if MATCH_KEY not in entry:
            return entry
        spec = MatchSpec.of(entry[MATCH_KEY], f"methods.{self.method}.match")
        return {**without_match(entry), spec.key: read_matched(self.model, self.method, spec)["value"]}

    @cached_property
    def adapter(self):
        from models import get_adapter

        return get_adapter(self.model)

    @cached_property
    def accelerator(self):
        from methods import make_method

        from methods.registry import METHODS

        settings = {k: v for k, v in self.method_cfg.items() if k != "method"}
        if METHODS[self.method_cfg["method"]].trained and not settings.get("schedule"):
            from methods.diffsparse.method import schedule_path

            settings["schedule"] = str(schedule_path(self.model, self.method))  # made by rule train_schedule
        elif settings.get("schedule"):
            from methods.paths import committed_path

            settings["schedule"] = str(committed_path(settings["schedule"]))  # e.g. a committed proxy schedule
        if METHODS[self.method_cfg["method"]].calibrated and settings.get("mag_ratios") is None \
                and not settings.get("calibration"):
            from methods.peers.calibration import calibration_path

            settings["calibration"] = str(calibration_path(self.model, self.method))  # rule calibrate_peer
        return make_method(self.method_cfg["method"], **settings)

    @property
    def num_steps(self) -> int:
        return self.accelerator.num_steps(self.model_cfg["steps"])

    @property
    def num_samples(self) -> int:
        return self.model_cfg["num_samples"]

    @property
    def batch_size(self) -> int:
        """Samples per pipeline call: the model's own setting, else the config's."""
        return self.model_cfg.get("batch_size", self.config["batch_size"])

    def check_ready(self) -> None:
        """Fail before any model is built if the method needs an artefact that is missing or stale
        (a DiffSparse schedule not trained yet, or trained for other settings; SparseDiT weights not
        fine-tuned yet, or not matching their recorded digests) or cannot run on this model."""
        if self.accelerator.trained:
            self.check_schedule()
        if self.accelerator.replaces_denoiser:
            self.check_denoiser()
            self.accelerator.check_ready(self.model, self.method)
        if self.accelerator.attaches_peer:
            self.check_peer()

    def check_schedule(self) -> None:
        """A trained schedule exists, fits the variant (ratio, interval) and was trained on this model's
        sampling: the same weights, scheduler, guidance and ToCa settings (a committed schedule outlives
        the proxy it was trained on). Schedules from before `weights_id` was recorded skip that key."""
        from dsbench.provenance import weights_id

        accel = self.accelerator
        found = accel.load_schedule().meta
        expected = {"weights_id": weights_id(self), "scheduler": self.model_cfg["scheduler"],
                    "guidance": self.model_cfg["guidance_scale"], "toca": accel.config.toca}
        stale = [k for k in expected if k in found and found[k] != expected[k]]
        if stale:
            raise ValueError(f"{self.method}: schedule {accel.config.schedule} was trained under other settings "
                             f"({'; '.join(f'{k}: {found[k]!r} != {expected[k]!r}' for k in stale)}); retrain it "
                             "(rule train_schedule)")

    def check_peer(self) -> None:
        """A peer runs on this model family, its library is installed, and a calibrated peer's file exists and
        was measured on this model's sampling (same model, steps and weights)."""
        from dsbench.provenance import weights_id

        self.check_peer_family()
        accel = self.accelerator
        if accel.calibrated and accel.config.mag_ratios is None:
            from methods.peers.calibration import read_calibration_meta

            accel.ratios()  # missing or corrupt: the error names the rule
            found = read_calibration_meta(accel.config.calibration)
            expected = self.calibration_identity(weights_id(self))
            stale = [k for k in expected if found.get(k) != expected[k]]
            if stale:
                raise ValueError(f"{self.method}: calibration {accel.config.calibration} was measured under other "
                                 f"settings ({', '.join(f'{k}: {found.get(k)!r} != {expected[k]!r}' for k in stale)}); "
                                 "calibrate again (rule calibrate_peer)")

    def check_peer_family(self) -> None:
        """The peer's library runs on this model family and is installed."""
        from methods.peers import PeerUnsupported

        accel, family = self.accelerator, self.adapter.family
        if family in accel.unsupported:
            raise PeerUnsupported(f"{accel.name} ({accel.library}) does not run on {family} models: "
                                  f"{accel.unsupported[family]}")
        if accel.library == "cache-dit":
            from methods.peers.cachedit import import_cache_dit

            import_cache_dit()

    def calibration_identity(self, weights: str) -> dict:
        """What a calibration's ratios depend on: the model's sampling, not the peer's thresholds."""
        m = self.model_cfg
        return {"model": self.model, "weights_id": weights, "num_steps": self.num_steps,
                "scheduler": m["scheduler"], "guidance_scale": m["guidance_scale"],
                "samples": self.accelerator.config.calibration_samples}

    def check_denoiser(self) -> None:
        """A method that replaces the denoiser runs on the model families it names, at this model's depth."""
        accel, preset = self.accelerator, self.adapter.preset
        if preset.family not in accel.denoiser_families:
            raise ValueError(f"{self.method} ({accel.name}) replaces the transformer of "
                             f"{' / '.join(accel.denoiser_families)} models only; {self.model} is a {preset.family} model")
        accel.check_depth(self.model, preset.transformer["num_layers"])

    def sample_identity(self, base_seed: int | None = None) -> dict:
        """What this cell's samples depend on, recorded in every shard and compared before a shard is reused
        (dsbench/samples.py check_identity): a shard made under other settings is refused, never mixed in."""
        from dsbench.io import sha256_file
        from dsbench.provenance import weights_id

        m = self.model_cfg
        from dsbench.scope import SAMPLING  # the model settings a sample's pixels depend on (one list)

        ident = {"model": self.model, **{k: m.get(k) for k in SAMPLING if k != "dtype"},
                 "dtype": m.get("dtype", self.config["dtype"]), "weights_id": weights_id(self),
                 "base_seed": self.config["seed"] if base_seed is None else base_seed,
                 "num_steps": self.num_steps, "method": self.method_cfg}
        if self.accelerator.trained:  # a retrained schedule makes other samples
            path = Path(self.accelerator.config.schedule)
            ident["schedule_sha256"] = sha256_file(path) if path.is_file() else None
        if self.accelerator.replaces_denoiser:  # other weights or density make other samples
            ident["denoiser"] = self.accelerator.denoiser_identity()
        if self.accelerator.calibrated:  # recalibrated ratios make other samples
            path = self.accelerator.config.calibration
            ident["calibration_sha256"] = sha256_file(path) if path and Path(path).is_file() else None
        return ident

    def conditions(self) -> list:
        return conditions_mod.load_conditions(self.model_cfg["dataset"], self.num_samples, self.config["resources"])

    def samples_dir(self, root: str | Path = "results") -> Path:
        return Path(root) / "samples" / self.model / self.method

    # ---- building -------------------------------------------------------------------------------
    def build_pipeline(self, device: str | None = None, meta: bool = False):
        """The model's pipeline; for a method that replaces the denoiser (SparseDiT), with its network as
        `pipe.transformer` (on the meta device too), so every verb runs it."""
        source = "meta" if meta else self.model_cfg["source"]
        if not meta:
            check_device(device or self.config["device"])
        swap = self.accelerator.replaces_denoiser
        if swap:  # before anything is built or loaded
            self.check_denoiser()
            if not meta:
                self.accelerator.check_ready(self.model, self.method)
        guided = self.model_cfg.get("guided_channels")
        pipe = self.adapter.build(
            source, device=device or self.config["device"], dtype=DTYPES[self.model_cfg.get("dtype", self.config["dtype"])],
            scheduler=self.model_cfg["scheduler"], weights=self.model_cfg.get("weights"), seed=self.config["seed"],
            guided_channels=None if swap else guided)
        if swap:
            pipe.transformer = self.accelerator.denoiser(pipe, self.adapter)
            if guided is not None:  # the guidance hook belongs on the network that runs
                self.adapter.guide_channels(pipe, guided)
        return pipe

    def plan(self, pipe):
        return self.accelerator.plan(self.num_steps, self.adapter.layout(pipe))

    @contextlib.contextmanager
    def accelerated(self, pipe):
        """The method's engine (a peer: its library's cache) attached to `pipe` for the duration of the context."""
        from methods.engine import Engine

        if self.accelerator.attaches_peer:
            self.check_peer()
            with self.accelerator.attach(pipe, self.adapter, self.num_steps, self.model_cfg["guidance_scale"]) as run:
                yield run
            return

        controller = None
        if self.dynamic and self.adapter.denoiser(pipe).device.type != "meta":
            controller = self.accelerator.controller(self.num_steps, self.adapter.layout(pipe).total_blocks)
        with Engine(self.adapter, pipe, self.plan(pipe), self.accelerator.ranking(), controller=controller,
                    **self.adapter.engine_cfg(self.model_cfg["guidance_scale"])) as engine:
            yield engine

    @property
    def dynamic(self) -> bool:
        """Decides at run time: MACs come from real runs (and a controller or a batch-reading peer samples one
        image at a time)."""
        return self.accelerator.dynamic or self.accelerator.attaches_peer

    def sample(self, pipe, engine, conditions, seeds):
        def one_call(c, s):
            engine.reset()  # a previous call that raised must not leave state behind
            engine.for_samples(s)
            return self.adapter.sample(pipe, c, s, num_steps=self.num_steps,
                                       guidance_scale=self.model_cfg["guidance_scale"])

        with torch.inference_mode():
            if not engine.per_image:
                return one_call(conditions, seeds)
            images = [one_call([c], [s]) for c, s in zip(conditions, seeds)]
            return None if images[0] is None else torch.cat(images)
