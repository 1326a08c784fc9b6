"""The registry of discriminator families: a family name (DiscriminatorConfig.family) -> how to build its D and S.

A family is a module in this package offering `build_discriminator(cfg)` and `build_siamese(cfg)` (S when
ModelConfig.siamese is "separate"), whose networks satisfy travel.nets.discriminators.base. Translation imports the
generator alone, never this package.
"""

from __future__ import annotations

from types import ModuleType

from travel.config import FAMILIES, DiscriminatorConfig
from travel.errors import ConfigError
from travel.nets.discriminators import projected, scratch
from travel.nets.discriminators.base import Discriminator, Embedding

REGISTRY: dict[str, ModuleType] = {"projected": projected, "scratch": scratch}
assert set(REGISTRY) == set(FAMILIES), "every family travel.config names has its module here"


def _family(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ConfigError(f"unknown discriminator family {name!r} (known: {', '.join(REGISTRY)})", "DiscriminatorConfig.family")
    return REGISTRY[name]


def build_discriminator(cfg: DiscriminatorConfig) -> Discriminator:
    """D of cfg.family (cfg resolved: travel.config.resolve)."""
    return _family(cfg.family).build_discriminator(cfg)


def build_siamese(cfg: DiscriminatorConfig) -> Embedding:
    """The separate Siamese embedding S of cfg.family (ModelConfig.siamese = "separate")."""
    return _family(cfg.family).build_siamese(cfg)
