"""Loss functions as small pure functions of tensors (docs/METHOD.md, "Losses" and "Self-conditioning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anchor_distance(embedding: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """d(x) = ||D(x) - c||^2 / L, per image or per patch.

    embedding: [N, L] (one vector per image) or [N, P, L] (one per patch); anchor: [L] or [N, L] (one per sample).
    Returns [N] or [N, P].
    """
    if embedding.ndim == 3 and anchor.ndim == 2:
        anchor = anchor[:, None, :]  # a sample's anchor serves every one of its patches
    return (embedding - anchor).pow(2).mean(dim=-1)


def per_image(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch values [N, P] -> [N]: weighted by `weights` [P] (the projected discriminator's give every scale the
    same share, summing to 1 over its heads' patches, plus its pixel branch's weight), or the plain mean without.
    Per-image values [N] are returned as they are."""
    if values.ndim == 1:
        return values
    return (values * weights).sum(dim=-1) if weights is not None else values.mean(dim=-1)


def pooled_embedding(embedding: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per image for the TraVeL and margin losses: [N, L] as it is; [N, P, L] -> the patches' weighted
    mean [N, L] (with the projected weights: the mean over scales of each scale's mean vector, and the pixel
    branch's vector in its share)."""
    if embedding.ndim == 2:
        return embedding
    if weights is None:
        return embedding.mean(dim=1)
    return (embedding * weights[:, None]).sum(dim=1) / weights.sum()


def anchor_d_loss(
    real: torch.Tensor,
    fake: torch.Tensor,
    anchor: torch.Tensor,
    *,
    margin: float,
    fake_anchor: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Discriminator realism loss: real targets pulled to the anchor, translations pushed past the margin.

    real, fake: [N, L] embeddings, or [N, P, L] with one vector per patch: then every patch is pulled or pushed on
    its own (the hinge per patch) and the per-patch terms are averaged with `weights` [P] (see per_image).
    anchor: [L] or per-sample [N, L].
    fake_anchor: the anchors the fakes are pushed off, when they differ from the reals' (self-conditioning: one
    anchor per cluster, reals at their cluster's anchor, fakes at the anchor of the cluster they were asked for).
    """
    real_term = per_image(anchor_distance(real, anchor), weights).mean()
    fake_distance = anchor_distance(fake, anchor if fake_anchor is None else fake_anchor)
    fake_term = per_image(F.relu(margin - fake_distance), weights).mean()
    return {"d_real": real_term, "d_fake": fake_term}


def anchor_g_loss(fake: torch.Tensor, anchor: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Generator realism loss: pull translations (every patch of them, when per patch) onto the anchor."""
    return per_image(anchor_distance(fake, anchor), weights).mean()


def triplet_d_loss(real: torch.Tensor, fake: torch.Tensor, anchor: torch.Tensor, *, margin: float) -> torch.Tensor:
    """Triplet variant over in-batch pairs: relu(d(b_i) - d(G(a_j)) + m), all i, j."""
    d_real = anchor_distance(real, anchor)  # [N]
    d_fake = anchor_distance(fake, anchor)  # [M]
    return F.relu(d_real[:, None] - d_fake[None, :] + margin).mean()


def _pair_differences(embedding: torch.Tensor) -> torch.Tensor:
    """All differences e_i - e_j for i < j: [P, L]. Pairs i > j are the negatives and give the same losses."""
    n = embedding.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=embedding.device)
    return embedding[i] - embedding[j]


def travel_loss(source: torch.Tensor, translation: torch.Tensor, *, dist_weight: float) -> dict[str, torch.Tensor]:
    """Transformation-vector loss: vectors between sources should match vectors between their translations.

    source, translation: [N, L] embeddings (row i of each belongs to the same source image), N >= 2.
    Returns the cosine part (mean of 1 - cos, in [0, 2]) and the weighted squared-distance part.
    """
    if source.shape != translation.shape or source.shape[0] < 2:
        raise ValueError(f"travel_loss needs two [N>=2, L] embeddings of one shape, got {source.shape}, {translation.shape}")
    v = _pair_differences(source)  # [P, L]
    v_t = _pair_differences(translation)  # [P, L]
    cos = F.cosine_similarity(v, v_t, dim=-1, eps=1e-8)
    dist = (v - v_t).pow(2).mean(dim=-1)
    return {"travel_cos": (1 - cos).mean(), "travel_dist": dist_weight * dist.mean()}


def margin_loss(source: torch.Tensor, *, delta: float) -> torch.Tensor:
    """Keeps the Siamese embedding from collapsing: distinct sources at least delta apart (per-entry distance)."""
    v = _pair_differences(source)
    return F.relu(delta - v.pow(2).mean(dim=-1)).mean()


def rotation_loss(logits: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """SS-GAN: cross-entropy of the 4-way rotation head. logits: [N, 4]; rotations: [N] in 0..3."""
    return F.cross_entropy(logits, rotations)


def r1_penalty(real_scores: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: squared gradient norm of the discriminator's score on real images (images need requires_grad)."""
    (grad,) = torch.autograd.grad(real_scores.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()
