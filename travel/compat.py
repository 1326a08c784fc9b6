"""Reading saved configs of every schema this version knows: the one place older run folders and weights are upgraded.

A saved config carries its schema version (weights' metadata, the resume state, config.json's "schema_version"; a
config.json without one is schema 1). Reading it upgrades the dict step by step to today's schema, then builds the
dataclasses (travel.config.from_dict). Each step is a pure function of the dict, so an old file reads the same
wherever it is read (translate, resume, eval, the demo). docs/METHOD.md, "Files and formats", lists the schemas.

Schema 1 grew keys while it was current. A key an older file lacks reads as what the code meant before the key
existed (ABSENT_IN_1), never as today's default: a run from before the warp trained without it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from travel.config import SCHEMA_VERSION, FitConfig, GeneratorConfig, from_dict, projected_resolution_for, to_dict
from travel.errors import ConfigError

SUPPORTED_SCHEMAS = (1, 2)

# (section, key) -> the meaning of a schema-1 file without the key (sections as in schema 1's flat layout).
ABSENT_IN_1: dict[tuple[str, str], Any] = {
    ("generator", "padding"): "zeros",  # zero padding until replicate became the default
    ("generator", "warp"): False,  # no displacement field before --warp
    ("generator", "skip_from"): 0,
    ("discriminator", "family"): "scratch",  # the only family before the projected one
    ("discriminator", "mixing"): "none",
    ("discriminator", "pixel_weight"): 0.0,
    ("discriminator", "head_channels"): 64,
    ("clusters", "features"): "discriminator",
    ("data", "flip"): True,
    ("data", "augment_colour"): True,
}
_SCRATCH_KEYS_1 = ("base_channels", "max_channels", "depth", "attention_level")
_PROJECTED_KEYS_1 = ("resolution", "head_channels", "mixing", "pixel_weight")


def _absent(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every schema-1 key it lacks set to its meaning then."""
    return {**{key: value for (where, key), value in ABSENT_IN_1.items() if where == section}, **data}


def generator_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    return _absent("generator", data)


def discriminator_1_to_2(data: dict[str, Any], *, crop_size: int) -> dict[str, Any]:
    """Schema 1's flat discriminator (both families' settings side by side) into one config per family."""
    data = _absent("discriminator", data)
    scratch = {key: data.pop(key) for key in _SCRATCH_KEYS_1 if key in data}
    projected = {key: data.pop(key) for key in _PROJECTED_KEYS_1 if key in data}
    projected.setdefault("resolution", projected_resolution_for(crop_size))  # unused by scratch runs from before it
    return {**data, "scratch": scratch, "projected": projected}


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """A copy of data[key] (empty when absent), refused in one line when it is not an object."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"expected an object, got {type(value).__name__}", f"{where}.{key}")
    return dict(value)


def fit_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1's FitConfig dict into schema 2's: the discriminator split by family, the rotation loss an on/off
    setting (schema 1 said "on" by a D weight above 0), and absent keys read as their old meaning."""
    data = dict(data)
    model = _section(data, "model", "FitConfig")
    crop = _section(data, "data", "FitConfig").get("crop_size", 128)
    model["generator"] = generator_1_to_2(_section(model, "generator", "ModelConfig"))
    model["discriminator"] = discriminator_1_to_2(_section(model, "discriminator", "ModelConfig"),
                                                  crop_size=crop if isinstance(crop, int) else 128)
    data["model"] = model
    loss = _section(data, "loss", "FitConfig")
    beta = loss.get("rotation_d", 0.0)
    loss["rotation"] = bool(beta > 0) if isinstance(beta, (int, float)) else beta
    if loss["rotation"] is False:
        loss["rotation_d"] = 1.0  # unused while off; today's default weight
    data["loss"] = loss
    for section in ("clusters", "data"):
        data[section] = _absent(section, _section(data, section, "FitConfig"))
    return data


_FIT_STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: fit_1_to_2}
_GENERATOR_STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: generator_1_to_2}


def _upgrade(data: Any, version: Any, steps: dict[int, Callable[[dict[str, Any]], dict[str, Any]]], what: str) -> dict[str, Any]:
    if version not in SUPPORTED_SCHEMAS:
        raise ConfigError(f"{what} has schema version {str(version)[:20]!r}; this travel reads {', '.join(map(str, SUPPORTED_SCHEMAS))}")
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected an object, got {type(data).__name__}")
    for step in range(version, SCHEMA_VERSION):
        data = steps[step](data)
    return data


def read_fit_config(data: Any, version: Any) -> FitConfig:
    """A saved FitConfig dict of schema `version`, as today's FitConfig."""
    return from_dict(FitConfig, _upgrade(data, version, _FIT_STEPS, "the run config"))


def read_generator_config(data: Any, version: Any) -> GeneratorConfig:
    """A saved GeneratorConfig dict (weights' model_config) of schema `version`, as today's GeneratorConfig."""
    return from_dict(GeneratorConfig, _upgrade(data, version, _GENERATOR_STEPS, "the model config"))


def dump_run_config(config: FitConfig) -> str:
    """config.json's text: the config with its schema version, which read_run_config reads back."""
    return json.dumps({"schema_version": SCHEMA_VERSION, **to_dict(config)}, indent=2, sort_keys=True)


def read_run_config(text: str) -> FitConfig:
    """config.json's text (dump_run_config, or a schema-1 file without a version) as today's FitConfig."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object, got {type(data).__name__}")
    data = dict(data)
    return read_fit_config(data, data.pop("schema_version", 1))
