"""Clustering for self-conditioning (docs/METHOD.md, "Self-conditioning"): seeded k-means, stable cluster ids, frequencies, scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# Typical use, every `recluster_every` steps of a self-conditioned GAN (`previous` is None the first time):
#
#     features = discriminator.features(fixed_real_subset)               # [N, F]
#     result = recluster(features, k, previous=previous, generator=gen)  # k-means++ / warm start + matching
#     previous = result
#     ids_for_real = assign(discriminator.features(real_batch), result.means)   # or result.labels
#     ids_for_fakes = torch.multinomial(cluster_frequencies(result.labels, k), n, replacement=True)


@dataclass(frozen=True)
class KMeansResult:
    """One k-means solution. Cluster ids index `means`; `labels` are the ids of the clustered points."""

    means: torch.Tensor  # [K, F]
    labels: torch.Tensor  # [N] int64 in 0..K-1
    inertia: float  # sum of squared distances of the points to their means
    iterations: int  # Lloyd iterations run


def _check_points(points: torch.Tensor, k: int) -> torch.Tensor:
    if points.ndim != 2:
        raise ValueError(f"points must be [N, F], got shape {tuple(points.shape)}")
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k must be in 1..N={points.shape[0]}, got {k}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinity")
    return points.detach().float()


def squared_distances(points: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """||x_i - m_j||^2 for points [N, F] and means [K, F]: [N, K] (clamped at 0 against rounding)."""
    # Discriminator features often sit far from the origin relative to their spread; expanding the square there
    # cancels away most of the float32 digits, so move the origin to the points' centre first.
    centre = points.mean(dim=0, keepdim=True)
    points, means = points - centre, means - centre
    cross = points @ means.T  # [N, K]
    return (points.pow(2).sum(1, keepdim=True) - 2 * cross + means.pow(2).sum(1)[None, :]).clamp_min(0)


def assign(points: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Id of the nearest mean for every point: [N] int64. points: [N, F]; means: [K, F]."""
    return squared_distances(points.detach().float(), means.float()).argmin(dim=1)


def kmeans_plus_plus(points: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each new mean is a point drawn with probability
    proportional to its squared distance to the nearest mean so far. Same generator state, same means. [K, F]."""
    points = _check_points(points, k)
    n = points.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    means = [points[first[0]]]
    nearest = squared_distances(points, means[0][None]).squeeze(1)  # [N]
    for _ in range(1, k):
        total = nearest.sum()
        # Fewer distinct points than k: every point is already a mean, so any pick is as good as another.
        weights = nearest / total if total > 0 else torch.full_like(nearest, 1.0 / n)
        pick = torch.multinomial(weights, 1, generator=generator)[0]
        means.append(points[pick])
        nearest = torch.minimum(nearest, squared_distances(points, points[pick][None]).squeeze(1))
    return torch.stack(means)


def means_from_labels(points: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the points carrying each id: [K, F]. An id with no points gets NaN (a starved cluster)."""
    points = points.detach().float()
    sums = torch.zeros(k, points.shape[1]).index_add_(0, labels, points)
    counts = torch.bincount(labels, minlength=k).float()[:, None]
    return sums / counts  # 0 / 0 = NaN marks an empty cluster


def kmeans(
    points: torch.Tensor,
    k: int,
    *,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    n_init: int = 1,
) -> KMeansResult:
    """Lloyd's k-means on points [N, F].

    init: starting means [K, F] (a warm start, e.g. the previous solution's means); rows that are NaN (starved
    clusters) are re-seeded by k-means++ from the other rows. None: k-means++ from scratch with `generator`, best
    (lowest inertia) of n_init restarts, as scikit-learn's n_init: one k-means++ start can put two seeds in one group.
    A cluster that empties during the iterations takes the point farthest from its mean, so all k ids stay in use
    whenever the points have k distinct values. Stops when no mean moves by more than tol * (mean squared norm).
    """
    points = _check_points(points, k)
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if init is None and n_init > 1:
        tries = [kmeans(points, k, generator=generator, max_iter=max_iter, tol=tol) for _ in range(n_init)]
        return min(tries, key=lambda result: result.inertia)
    if init is None:
        means = kmeans_plus_plus(points, k, generator=generator)
    else:
        if init.shape != (k, points.shape[1]):
            raise ValueError(f"init must be [k={k}, F={points.shape[1]}], got {tuple(init.shape)}")
        means = _fill_starved(points, init.detach().float().clone(), generator=generator)
    scale = points.pow(2).sum(1).mean().clamp_min(1e-12)
    labels = assign(points, means)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        new_means = means_from_labels(points, labels, k)
        empty = torch.isnan(new_means[:, 0])
        if empty.any():
            new_means = _reseed_empty(points, new_means, labels, empty)
        shift = (new_means - means).pow(2).sum(1).max()
        means = new_means
        labels = assign(points, means)
        if shift <= tol * scale:
            break
    inertia = (points - means[labels]).pow(2).sum().item()  # direct, not the expanded form: no cancellation
    return KMeansResult(means=means, labels=labels, inertia=inertia, iterations=iterations)


def _fill_starved(points: torch.Tensor, means: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """Replace NaN rows of means by k-means++ draws given the finite rows."""
    missing = torch.isnan(means).any(dim=1)
    if not missing.any():
        return means
    if missing.all():
        return kmeans_plus_plus(points, means.shape[0], generator=generator)
    nearest = squared_distances(points, means[~missing]).min(dim=1).values  # [N]
    for row in torch.nonzero(missing).flatten().tolist():
        total = nearest.sum()
        weights = nearest / total if total > 0 else torch.full_like(nearest, 1.0 / len(nearest))
        pick = torch.multinomial(weights, 1, generator=generator)[0]
        means[row] = points[pick]
        nearest = torch.minimum(nearest, squared_distances(points, points[pick][None]).squeeze(1))
    return means


def _reseed_empty(points: torch.Tensor, means: torch.Tensor, labels: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Give each empty cluster the point currently farthest from its own mean (deterministic, no RNG needed)."""
    filled = means.clone()
    own = points - torch.nan_to_num(means)[labels]  # [N, F]
    far = own.pow(2).sum(1)
    for row in torch.nonzero(empty).flatten().tolist():
        pick = int(far.argmax())
        filled[row] = points[pick]
        far[pick] = -1.0  # never hand the same point to two empty clusters
    return filled


def match_clusters(new_labels: torch.Tensor, old_labels: torch.Tensor, k: int) -> torch.Tensor:
    """Hungarian matching of new cluster ids to old ones by how many points they share.

    new_labels, old_labels: [N] ids in 0..k-1 of the same points under the new and the old clustering.
    Returns mapping [k] int64 with mapping[new_id] = old_id (a permutation) maximising the total overlap,
    so `mapping[new_labels]` keeps the ids a generator has learnt to follow.
    """
    if new_labels.shape != old_labels.shape or new_labels.ndim != 1:
        raise ValueError(f"labels must be two [N] tensors of one shape, got {tuple(new_labels.shape)}, {tuple(old_labels.shape)}")
    overlap = torch.zeros(k, k, dtype=torch.int64)
    overlap.index_put_((new_labels.long(), old_labels.long()), torch.ones_like(new_labels, dtype=torch.int64), accumulate=True)
    rows, cols = linear_sum_assignment(overlap.numpy(), maximize=True)
    mapping = torch.empty(k, dtype=torch.int64)
    mapping[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
    return mapping


def relabel(result: KMeansResult, mapping: torch.Tensor) -> KMeansResult:
    """The same clustering with every id j renamed to mapping[j] (mapping: a permutation [K])."""
    means = torch.empty_like(result.means)
    means[mapping] = result.means
    return KMeansResult(means=means, labels=mapping[result.labels], inertia=result.inertia, iterations=result.iterations)


def recluster(
    features: torch.Tensor,
    k: int,
    *,
    previous: KMeansResult | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
    n_init: int = 1,
) -> KMeansResult:
    """One self-conditioning reclustering step on the features [N, F] of a fixed subset of real samples.

    previous: the last result on the same points (in the same order), or None the first time (k-means++, best of
    n_init restarts; a warm start needs no restarts).
    With a previous result the means are warm-started at the means of the new features grouped by the old ids,
    which follows the feature space as the discriminator changes, and the new ids are then Hungarian-matched
    to the old ones so that cluster k keeps meaning (nearly) the same points.
    """
    if previous is None:
        return kmeans(features, k, generator=generator, max_iter=max_iter, n_init=n_init)
    if previous.labels.shape[0] != features.shape[0]:
        raise ValueError(f"previous clustering has {previous.labels.shape[0]} points, features have {features.shape[0]}")
    init = means_from_labels(features, previous.labels, k)
    result = kmeans(features, k, init=init, generator=generator, max_iter=max_iter)
    return relabel(result, match_clusters(result.labels, previous.labels, k))


def cluster_frequencies(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Empirical share of each id: [k] float summing to 1 (ids for generated samples are drawn from it)."""
    if labels.numel() == 0:
        raise ValueError("cluster_frequencies needs at least one label")
    counts = torch.bincount(labels.long().flatten(), minlength=k).double()
    if counts.numel() > k:
        raise ValueError(f"labels must lie in 0..{k - 1}, got {int(labels.max())}")
    return (counts / counts.sum()).float()


# ---------------------------------------------------------------------------------------------
# Scores of a clustering against reference classes (e.g. the true modes of a mixture).


def _contingency(pred: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    pred_np = np.asarray(torch.as_tensor(pred).flatten().long())
    true_np = np.asarray(torch.as_tensor(true).flatten().long())
    if pred_np.shape != true_np.shape or pred_np.size == 0:
        raise ValueError(f"need two non-empty label arrays of one length, got {pred_np.shape}, {true_np.shape}")
    _, pred_idx = np.unique(pred_np, return_inverse=True)
    _, true_idx = np.unique(true_np, return_inverse=True)
    table = np.zeros((pred_idx.max() + 1, true_idx.max() + 1), dtype=np.float64)
    np.add.at(table, (pred_idx, true_idx), 1.0)
    return table  # [clusters, classes]


def purity(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Share of points whose cluster's majority class is their own class, in (0, 1]. 1.0: no cluster mixes classes."""
    table = _contingency(pred, true)
    return float(table.max(axis=1).sum() / table.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(pred: torch.Tensor, true: torch.Tensor) -> float:
    """I(pred; true) / ((H(pred) + H(true)) / 2), in [0, 1] (the arithmetic normalisation, scikit-learn's default).

    Invariant to renaming ids. Two single-cluster labelings count as identical (1.0).
    """
    table = _contingency(pred, true)
    h_pred, h_true = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_pred == 0.0 and h_true == 0.0:
        return 1.0
    joint = table / table.sum()
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())
    return max(0.0, min(1.0, mutual / ((h_pred + h_true) / 2)))


__all__ = [
    "KMeansResult", "assign", "cluster_frequencies", "kmeans", "kmeans_plus_plus", "match_clusters",
    "means_from_labels", "normalized_mutual_information", "purity", "recluster", "relabel", "squared_distances",
]
