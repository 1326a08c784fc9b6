"""Differentiable augmentation of what the discriminator judges (docs/METHOD.md, "Small-data augmentation"), built on kornia."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class DiffAugment(nn.Module):
    """Translation, cutout and colour jitter; differentiable, so the generator's gradient passes through.

    Real targets and translations get independent draws of the same distribution: the discriminator
    never sees an un-augmented image in the realism loss, so it cannot memorise a small dataset.
    """

    def __init__(self, *, colour: bool = True) -> None:
        super().__init__()
        # colour=False: translation and cutout only, so D judges colours as drawn (DataConfig.augment_colour).
        self.colour = K.ColorJiggle(brightness=0.2, contrast=0.2, saturation=0.2, p=1.0) if colour else nn.Identity()
        self.translate = K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection", p=1.0)
        self.cutout = K.RandomErasing(scale=(0.02, 0.12), ratio=(0.5, 2.0), value=0.0, p=0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, C, H, W] in [-1, 1] -> the same shape, augmented."""
        x = (images + 1) * 0.5  # kornia's colour ops expect [0, 1]
        x = self.colour(x)
        x = self.translate(x)
        x = self.cutout(x)
        return x * 2 - 1
