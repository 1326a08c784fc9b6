"""The scratch discriminator family: a small spectrally normalised encoder trained from scratch, one vector per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from travel.config import DiscriminatorConfig
from travel.errors import ConfigError
from travel.nets.blocks import SelfAttention

class ScratchDiscriminator(nn.Module):
    """Siamese encoder: image -> vector in R^vec_len. Every weight layer is spectrally normalised.

    Satisfies travel.nets.discriminators.base.Discriminator; the training loop uses nothing else. Shaped by
    cfg.scratch (widths, depth, attention level) and cfg.vec_len, cfg.rotation_head.
    """

    patch_weights = None  # one vector per image, not per patch

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.scratch
        if enc.attention_level is None or cfg.vec_len is None:
            raise ConfigError("unresolved discriminator config: build it from travel.config.resolve(config)")
        self.stem = spectral_norm(nn.Conv2d(cfg.channels, enc.width(0), 3, padding=1))
        blocks = []
        for lvl in range(1, enc.depth + 1):
            blocks.append(spectral_norm(nn.Conv2d(enc.width(lvl - 1), enc.width(lvl), 4, stride=2, padding=1)))
            blocks.append(nn.LeakyReLU(0.2))
            if lvl == enc.attention_level:
                blocks.append(SelfAttention(enc.width(lvl), spectral=True))
        self.trunk = nn.Sequential(*blocks)
        self.feature_dim = enc.width(enc.depth)
        self.head = spectral_norm(nn.Linear(self.feature_dim, cfg.vec_len))
        self.rotation = spectral_norm(nn.Linear(self.feature_dim, 4)) if cfg.rotation_head else None

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [N, F], used by the vector head, the rotation head and clustering."""
        x = F.leaky_relu(self.stem(image), 0.2)
        x = self.trunk(x)
        # Global sum pooling, as in SN-GAN/BigGAN: with every layer 1-Lipschitz, mean pooling shrinks the
        # embedding so far (entries ~0.03 at 128px) that the margins m and delta are out of reach.
        return x.sum(dim=(2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [N, C, H, W] in [-1, 1]. Returns the embedding [N, vec_len]."""
        return self.head(self.features(image))

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            raise RuntimeError("this discriminator was built without a rotation head")
        return self.rotation(features)



def build_discriminator(cfg: DiscriminatorConfig) -> ScratchDiscriminator:
    return ScratchDiscriminator(cfg)


def build_siamese(cfg: DiscriminatorConfig) -> ScratchDiscriminator:
    """The separate S of the scratch family: a second encoder with its own weights."""
    return ScratchDiscriminator(cfg)
