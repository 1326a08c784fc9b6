"""Self-conditioning's state during training (docs/METHOD.md, "Self-conditioning"): which real target is in which
style cluster, the clusters' anchors and frequencies, reclustering, and its part of the resume state."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from travel.config import FitConfig
from travel.data import ImageFolder
from travel.errors import CheckpointError
from travel.train.clustering import KMeansResult, assign, cluster_frequencies, recluster
from travel.train.distributed import World, broadcast

@dataclass
class Styles:
    """Self-conditioning state: one cluster id per real target image, fixed between reclusterings."""

    anchors: torch.Tensor  # [K, L]: c_k, the anchor of cluster k
    subset: torch.Tensor  # [M]: indices of the target images that k-means sees (fixed for the run)
    labels: torch.Tensor  # [num_targets]: cluster id of every target image
    frequencies: torch.Tensor  # [K]: share of each cluster; ids for translations are drawn from it
    result: KMeansResult | None = None  # the last clustering of the subset (warm start + id matching)

    def draw(self, count: int) -> torch.Tensor:
        """Cluster ids for a batch of `count` translations: one id, drawn from the clusters' frequencies. [count]

        One style per batch, not one per image: the TraVeL loss compares vectors between translations, and
        between two styles that vector also holds the gap between their anchors, which no source vector
        matches, so mixed batches train the generator to ignore the style (measured: every style gave the
        same colour on a three-sub-style task; with one style per batch they separate).
        """
        # torch.multinomial(frequencies, 1), draw for draw, without its validity check: that check reads a value
        # back from the GPU, a host-device sync twice a step.
        noise = torch.empty_like(self.frequencies).exponential_(1)
        style = torch.argmax(self.frequencies / noise, dim=-1, keepdim=True)  # [1]
        return style.expand(count).to(self.anchors.device)


def make_styles(config: FitConfig, num_targets: int, device: torch.device) -> Styles | None:
    k, vec_len = config.clusters.clusters, config.model.discriminator.vec_len
    if k == 0:
        return None
    # Anchors on distinct axes, scale * sqrt(L) from the origin: any two lie 2 * scale^2 apart in d(.), beyond
    # the margin m = 1 at the default scale, so a translation pulled onto c_k is far from every other anchor.
    anchors = torch.zeros(k, vec_len, device=device)
    anchors[torch.arange(k), torch.arange(k)] = config.clusters.anchor_scale * vec_len**0.5
    subset = torch.randperm(num_targets, generator=torch.Generator().manual_seed(config.train.seed))
    subset = subset[: config.clusters.subset].sort().values
    uniform = torch.full((k,), 1.0 / k, device=device)
    return Styles(anchors, subset, torch.zeros(num_targets, dtype=torch.long, device=device), uniform)

@torch.no_grad()
def _centre_crop_features(target: ImageFolder, indices: torch.Tensor, device: torch.device,
                          features: Callable[[torch.Tensor], torch.Tensor], *, batch: int = 64) -> torch.Tensor:
    """`features` of the centre crops of target images `indices`, `batch` at a time, as float32 on the CPU: [M, F]."""
    chunks = []
    for start in range(0, len(indices), batch):
        images = torch.stack([target.center(int(i)) for i in indices[start : start + batch]]).to(device)
        chunks.append(features(images).float().cpu())
    return torch.cat(chunks)

def embed_targets(disc: nn.Module, target: ImageFolder, indices: torch.Tensor, device: torch.device,
                  *, batch: int = 64) -> torch.Tensor:
    """D's pooled trunk features of the centre crops of target images `indices`, L2-normalised: [M, F]."""
    return _centre_crop_features(
        target, indices, device, lambda images: torch.nn.functional.normalize(disc.features(images).float(), dim=1),
        batch=batch,
    )

@torch.no_grad()
def backbone_style_targets(target: ImageFolder, indices: torch.Tensor, subset: torch.Tensor, device: torch.device,
                           *, batch: int = 64) -> torch.Tensor:
    """Style statistics of the frozen backbone (travel.nets.discriminators.projected.style_statistics) of the centre crops of target
    images `indices`, standardised with the mean and std of the clustering subset: [M, 992]."""
    from travel.nets.discriminators.projected import FrozenBackbone, style_statistics

    backbone = FrozenBackbone(128).to(device)
    features = _centre_crop_features(target, indices, device, lambda images: style_statistics(backbone, images), batch=batch)
    reference = features[subset]
    return (features - reference.mean(dim=0)) / (reference.std(dim=0) + 1e-6)

def update_styles(styles: Styles, disc: nn.Module, target: ImageFolder, device: torch.device, *, seed: int,
                  features_from: str = "discriminator") -> Styles:
    """Recluster the subset (k-means++ first, warm start and Hungarian-matched ids after), relabel every image.

    With frozen backbone features nothing changes between clusterings: they are clustered once, then kept.
    """
    if features_from == "backbone" and styles.result is not None:
        return styles
    k = styles.anchors.shape[0]
    everything = torch.arange(len(target))
    if features_from == "backbone":
        features = backbone_style_targets(target, everything, styles.subset, device)  # [num_targets, F]
    else:
        features = embed_targets(disc, target, everything, device)  # [num_targets, F]
    points = features[styles.subset]
    if styles.result is None:
        # The first clustering has no previous means to start from: k-means++ can settle in a local optimum
        # (two seeds in one true group), so keep the best of several restarts, as scikit-learn's n_init does.
        tries = [recluster(points, k, generator=torch.Generator().manual_seed(seed * 100 + t)) for t in range(10)]
        result = min(tries, key=lambda r: r.inertia)
    else:
        result = recluster(points, k, previous=styles.result, generator=torch.Generator().manual_seed(seed))
    labels = assign(features, result.means)
    labels[styles.subset] = result.labels
    return replace(styles, labels=labels.to(device), frequencies=cluster_frequencies(labels, k).to(device), result=result)

def share_styles(styles: Styles, world: World, device: torch.device) -> Styles:
    """Rank 0's cluster labels and frequencies on every rank. Only rank 0 clusters: the ranks must agree on every
    label, and features computed on different GPUs need not agree to the last bit."""
    if world.size == 1:
        return styles
    labels, frequencies = broadcast([styles.labels, styles.frequencies], world, device)
    return replace(styles, labels=labels, frequencies=frequencies)

def styles_state(styles: Styles) -> dict[str, torch.Tensor]:
    assert styles.result is not None
    return {"labels": styles.labels.cpu(), "frequencies": styles.frequencies.cpu(), "subset": styles.subset,
            "means": styles.result.means, "subset_labels": styles.result.labels}

def restore_styles(state: dict[str, Any], styles: Styles | None, device: torch.device) -> Styles | None:
    if styles is None:
        return None
    try:
        saved = state["styles"]
        result = KMeansResult(means=saved["means"], labels=saved["subset_labels"], inertia=0.0, iterations=0)
        return replace(styles, subset=saved["subset"], labels=saved["labels"].to(device),
                       frequencies=saved["frequencies"].to(device), result=result)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"resume state has no usable self-conditioning state ({exc})") from None
