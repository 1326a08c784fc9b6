"""What the training loop asks of a discriminator family: the typed interface every family's networks provide."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Embedding(Protocol):
    """S, the Siamese embedding the TraVeL loss compares vectors of (D itself, or a separate network)."""

    # Each vector's share of its image, [P], when forward gives one vector per patch; None for one vector per image.
    patch_weights: torch.Tensor | None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """image [N, C, H, W] in [-1, 1] -> vectors [N, L] (one per image) or [N, P, L] (one per patch)."""
        ...


@runtime_checkable
class Discriminator(Embedding, Protocol):
    """D: an Embedding judged by the anchor loss, with pooled features for clustering and the rotation head."""

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled trainable features [N, F]: what the rotation head reads and self-conditioning clusters."""
        ...

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, F] -> logits [N, 4] of the rotation by 0, 90, 180, 270 degrees (needs a rotation head)."""
        ...
