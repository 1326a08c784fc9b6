"""The options of `travel fit`, one table for the command line and the Python API (`travel.fit`, `fit_config`).

Each option names where in FitConfig it lands; its default is read from the config dataclasses, so the defaults have
one home (travel.config). An option whose default is None is resolved by travel.config.resolve from the discriminator
family or the crop size; `auto` says how, for --help.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from travel.config import FAMILY_DEFAULTS, FitConfig, from_dict, resolve, to_dict
from travel.errors import ConfigError

GROUPS = ("Data", "Generator", "Discriminator", "Losses", "Run")


def _family_values(attribute: str) -> str:
    return ", ".join(f"{getattr(d, attribute):g} {name}" if not isinstance(getattr(d, attribute), str)
                     else f"{getattr(d, attribute)} {name}" for name, d in FAMILY_DEFAULTS.items())


@dataclass(frozen=True)
class Option:
    name: str  # the keyword of travel.fit; the flag is --NAME with dashes
    paths: tuple[str, ...]  # where in FitConfig it lands (dotted); the first gives the default and the type
    group: str  # one of GROUPS
    help: str
    flag: str | None = None  # the flag when it is not --NAME
    auto: str | None = None  # how a None default is resolved, for --help

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return self.value_in(FitConfig())

    def value_in(self, config: FitConfig) -> Any:
        """What this option holds in `config` (its first path)."""
        value: Any = config
        for part in self.paths[0].split("."):
            value = getattr(value, part)
        return value

    @property
    def type(self) -> Any:
        """The Python type the first path holds (None removed; Literal as str)."""
        owner, name = _owner(self.paths[0])
        hint = typing.get_type_hints(owner)[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is typing.Literal:
            return str
        return hint


def _o(name: str, paths: str, group: str, help: str, **kw: Any) -> Option:
    return Option(name, tuple(paths.split()), group, help, **kw)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    # Data
    _o("size", "data.crop_size", "Data", "Training crop, in pixels (square)."),
    _o("load_size", "data.load_size", "Data", "Shorter side before cropping.", auto="about 1.12 x --size"),
    _o("flip", "data.flip", "Data", "Random horizontal flips; --no-flip for domains a mirror changes (text, slanted styles)."),
    _o("augment", "data.augment", "Data", "Differentiable augmentation of everything the discriminator sees."),
    _o("augment_colour", "data.augment_colour", "Data",
       "Colour jitter among those augmentations; --no-augment-colour lets D see every colour as G drew it."),
    _o("workers", "data.workers", "Data", "Data-loading worker processes."),
    _o("cache", "data.cache", "Data", "Keep decoded images in memory."),
    # Generator (the width and depth shape the scratch encoder too)
    _o("channels", "model.generator.base_channels model.discriminator.scratch.base_channels", "Generator",
       "Width at full resolution (the generator's, and the scratch discriminator's)."),
    _o("depth", "model.generator.depth model.discriminator.scratch.depth", "Generator",
       "Downsamplings (the generator's, and the scratch discriminator's)."),
    _o("padding", "model.generator.padding", "Generator", "Border padding: replicate, or zeros (lets G paint frames)."),
    _o("skip_from", "model.generator.skip_from", "Generator",
       "U-Net skips from level N down only: 0 keeps all; 1 drops the full-resolution skip (G redraws strokes)."),
    _o("warp", "model.generator.warp", "Generator",
       "A learned displacement field that moves strokes (starts at zero); --no-warp repaints in place only."),
    _o("residual", "model.generator.residual", "Generator",
       "Output the input plus a learned change (starts as the identity); --no-residual draws afresh."),
    # Discriminator
    _o("disc", "model.discriminator.family", "Discriminator",
       "Discriminator family: projected (frozen ImageNet features, heads per patch) or scratch (trained from scratch)."),
    _o("vec_len", "model.discriminator.vec_len", "Discriminator", "Length of the discriminator's vectors (per patch when projected).",
       auto=_family_values("vec_len")),
    _o("siamese", "model.siamese", "Discriminator", "shared: S is the discriminator; separate: S is its own network.",
       auto=_family_values("siamese")),
    _o("head_channels", "model.discriminator.projected.head_channels", "Discriminator", "Projected: width of each scale's head."),
    _o("d_resolution", "model.discriminator.projected.resolution", "Discriminator",
       "Projected: resize images to this side before the frozen backbone (a multiple of 32).",
       auto="128, or --size rounded up to 32 if larger"),
    _o("mixing", "model.discriminator.projected.mixing", "Discriminator",
       "Projected: fixed random feature mixing: none, ccm (channels) or ccm+csm (channels and scales)."),
    _o("pixel_weight", "model.discriminator.projected.pixel_weight", "Discriminator",
       "Projected: weight of a pixel-space branch (a scratch encoder on the images as they are); 0 = none."),
    # Losses
    _o("travel_weight", "loss.travel", "Losses", "Weight of the TraVeL content loss.", auto=_family_values("travel")),
    _o("r1", "loss.r1_gamma", "Losses", "R1 gradient penalty weight on real images (0 = off)."),
    _o("rotation", "loss.rotation", "Losses", "Self-supervised rotation loss (SS-GAN); D gets a rotation head."),
    _o("rotation_d", "loss.rotation_d", "Losses", "With --rotation: the discriminator's rotation loss weight (beta)."),
    _o("rotation_g", "loss.rotation_g", "Losses", "With --rotation: the generator's rotation loss weight (alpha)."),
    _o("rotation_decay", "loss.rotation_g_decay", "Losses", "Decay alpha linearly to 0 over training."),
    _o("clusters", "clusters.clusters", "Losses", "Self-conditioning: K style clusters of the targets (0 = off)."),
    _o("recluster_every", "clusters.recluster_every", "Losses", "Steps between reclusterings."),
    _o("cluster_features", "clusters.features", "Losses",
       "What self-conditioning clusters: discriminator (D's features, reclustered as D learns) or backbone "
       "(style statistics of the frozen ImageNet features, clustered once)."),
    # Run
    _o("steps", "train.steps", "Run", "Generator updates."),
    _o("batch_size", "train.batch_size", "Run", "Images per domain per step (>= 2), per process."),
    _o("lr_g", "train.lr_g", "Run", "Generator learning rate (TTUR).", auto=_family_values("lr_g")),
    _o("lr_d", "train.lr_d", "Run", "Discriminator learning rate (TTUR)."),
    _o("d_steps", "train.d_steps", "Run", "Discriminator updates per generator update."),
    _o("seed", "train.seed", "Run", "Random seed: same seed, same run."),
    _o("device", "train.device", "Run", "auto, cpu, cuda or mps."),
    _o("precision", "train.precision", "Run", "auto (bf16 on CUDA), fp32, bf16 or fp16."),
    _o("compile", "train.compile", "Run", "torch.compile the networks (slow first steps)."),
    _o("channels_last", "train.channels_last", "Run", "NHWC layout (faster convolutions on CPU and GPU)."),
    _o("log_every", "train.log_every", "Run", "Steps between metrics.jsonl lines."),
    _o("sample_every", "train.sample_every", "Run", "Steps between sample grids."),
    _o("save_every", "train.save_every", "Run", "Steps between saves of the resume state and weights."),
)}
# `travel bench speed`: every option that shapes the training step (not data loading, logging or the run's length).
BENCH_OPTIONS = tuple(name for name in OPTIONS if name not in (
    "load_size", "flip", "workers", "cache", "recluster_every", "cluster_features", "steps", "log_every", "sample_every",
    "save_every",
))
# What a run may change on resume: how the step runs, not what it computes (and how long it runs).
RESUME_OPTIONS = ("steps", "workers", "compile", "channels_last")


def _owner(path: str) -> tuple[type, str]:
    """The dataclass that holds the last part of a dotted FitConfig path, and that part."""
    owner: type = FitConfig
    *parents, name = path.split(".")
    for part in parents:
        owner = typing.get_type_hints(owner)[part]
    return owner, name


@lru_cache(maxsize=1)
def _flags_by_setting() -> dict[str, str]:
    flags = {}
    for option in OPTIONS.values():
        for path in option.paths:
            owner, name = _owner(path)
            flags.setdefault(f"{owner.__name__}.{name}", option.flag_name)
    flags["DiscriminatorConfig.rotation_head"] = OPTIONS["rotation"].flag_name
    return flags


def flag_for(setting: str | None) -> str | None:
    """The `travel fit` flag that sets `setting` ("TrainConfig.batch_size" -> "--batch-size"), or None."""
    return _flags_by_setting().get(setting or "")


def fit_config(source: str | Path | None = None, target: str | Path | None = None, *, data: str | Path | None = None,
               name: str | None = None, **options: Any) -> FitConfig:
    """The resolved FitConfig that `travel fit` builds from the same settings: domains from source and target (or a
    CycleGAN-layout `data` folder), the run named SRC2DST unless `name` is given, and any OPTIONS as keywords (the
    flags in snake_case: lr_g=1e-4, warp=False). Without domains, a config for benchmarks on generated data."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        near = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        raise ConfigError(f"unknown option {unknown[0]!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    settings = to_dict(FitConfig())
    for key, value in options.items():
        if value is None and OPTIONS[key].default is not None:
            raise ConfigError(f"{key} cannot be None")
        for path in OPTIONS[key].paths:
            *parents, last = path.split(".")
            where = settings
            for part in parents:
                where = where[part]
            where[last] = value
    if source is not None or target is not None or data is not None:
        from travel.data import resolve_domains  # here, not at the top: it imports torch, and every `travel` command imports this table

        src, dst = resolve_domains(str(source) if source else None, str(target) if target else None, str(data) if data else None)
        # --data horse2zebra names the run horse2zebra: "trainA2trainB" would put every CycleGAN dataset in one folder.
        default_name = Path(data).resolve().name if data and not (source or target) else f"{src.resolve().name}2{dst.resolve().name}"
        settings["data"].update(source=str(src.resolve()), target=str(dst.resolve()))
        settings["name"] = name or default_name
    elif name:
        settings["name"] = name
    config = from_dict(FitConfig, settings)
    if config.model.discriminator.family != "projected" and options.get("d_resolution") is not None:
        raise ConfigError("sizes the backbone's input: it needs the projected family", "ProjectedConfig.resolution")
    return resolve(config)


def option_values(config: FitConfig, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What these OPTIONS hold in `config` (their first paths), for reports."""
    return {name: OPTIONS[name].value_in(config) for name in names}
