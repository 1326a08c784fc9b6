"""travel.train.clustering: k-means on blobs, stable ids across reclusterings, frequencies, purity and NMI by hand."""

from __future__ import annotations

import math

import pytest
import torch

from travel.train.clustering import (
    assign,
    cluster_frequencies,
    kmeans,
    kmeans_plus_plus,
    match_clusters,
    means_from_labels,
    normalized_mutual_information,
    purity,
    recluster,
    relabel,
)


def blobs(k: int = 6, per: int = 50, dim: int = 5, *, seed: int = 0, spread: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """k tight, well-separated Gaussian blobs: points [k*per, dim] and their true blob ids [k*per]."""
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, dim, generator=gen)
    truth = torch.arange(k).repeat_interleave(per)
    points = centres[truth] + spread * torch.randn(k * per, dim, generator=gen)
    return points, truth


def test_kmeans_recovers_well_separated_blobs():
    points, truth = blobs()
    result = kmeans(points, 6, generator=torch.Generator().manual_seed(1))
    assert purity(result.labels, truth) == 1.0
    assert normalized_mutual_information(result.labels, truth) == pytest.approx(1.0)
    assert result.means.shape == (6, 5)
    # Each mean is its blob's average, so the inertia is just the within-blob scatter.
    assert result.inertia == pytest.approx(float((points - means_from_labels(points, truth, 6)[truth]).pow(2).sum()), rel=1e-4)
    assert torch.equal(assign(points, result.means), result.labels)


def test_kmeans_is_seeded():
    points, _ = blobs(k=4, spread=3.0)  # overlapping blobs, so the answer depends on the initialisation
    first = kmeans(points, 7, generator=torch.Generator().manual_seed(3))
    again = kmeans(points, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.means, again.means) and torch.equal(first.labels, again.labels)
    seeds = kmeans_plus_plus(points, 7, generator=torch.Generator().manual_seed(3))
    other = kmeans_plus_plus(points, 7, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(seeds, other)


def test_kmeans_plus_plus_picks_distinct_points_and_survives_duplicates():
    points, truth = blobs(k=5)
    means = kmeans_plus_plus(points, 5, generator=torch.Generator().manual_seed(0))
    # D^2 sampling on tight blobs lands one seed in each blob.
    assert sorted(truth[assign(means, points)].tolist()) == [0, 1, 2, 3, 4]
    same = torch.ones(10, 3)  # one distinct value, k = 4: no crash, every mean is that value
    result = kmeans(same, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result.means, torch.ones(4, 3))


def test_warm_start_keeps_ids():
    points, truth = blobs()
    first = kmeans(points, 6, generator=torch.Generator().manual_seed(0))
    # The "discriminator" moves a little: the features drift, the clusters stay.
    drifted = points * 1.05 + 0.3
    warm = kmeans(drifted, 6, init=first.means * 1.05 + 0.3)
    assert torch.equal(warm.labels, first.labels)
    again = recluster(drifted, 6, previous=first, generator=torch.Generator().manual_seed(99))
    assert torch.equal(again.labels, first.labels)
    assert purity(again.labels, truth) == 1.0


def test_hungarian_matching_undoes_a_permutation():
    old = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    permutation = torch.tensor([3, 0, 4, 1, 2])  # new id of old cluster i
    new = permutation[old]
    mapping = match_clusters(new, old, 5)
    assert torch.equal(mapping[new], old)
    assert sorted(mapping.tolist()) == [0, 1, 2, 3, 4]


def test_matching_maximises_overlap_when_clusters_change():
    old = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    new = torch.tensor([2, 2, 2, 1, 0, 0, 0, 1, 1, 1])  # old cluster 0 lost one point to new cluster 1
    mapping = match_clusters(new, old, 3)
    assert mapping.tolist() == [1, 2, 0]  # new 0 -> old 1, new 1 -> old 2, new 2 -> old 0


def test_recluster_follows_previous_ids_even_when_kmeans_numbers_them_differently():
    points, _ = blobs()
    first = kmeans(points, 6, generator=torch.Generator().manual_seed(0))
    renamed = relabel(first, torch.tensor([5, 4, 3, 2, 1, 0]))
    assert torch.equal(renamed.labels, 5 - first.labels)
    assert torch.equal(assign(points, renamed.means), renamed.labels)
    again = recluster(points, 6, previous=renamed, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.labels, renamed.labels)


def test_starved_and_empty_clusters_are_reseeded():
    points, truth = blobs(k=3)
    init = means_from_labels(points, truth, 4)  # id 3 has no points
    assert torch.isnan(init[3]).all() and not torch.isnan(init[:3]).any()
    result = kmeans(points, 4, init=init, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(result.labels, minlength=4).min() > 0  # all four ids in use


def test_cluster_frequencies():
    freq = cluster_frequencies(torch.tensor([0, 0, 1, 3]), 4)
    assert freq.tolist() == [0.5, 0.25, 0.0, 0.25]
    with pytest.raises(ValueError):
        cluster_frequencies(torch.tensor([0, 5]), 4)


def test_purity_and_nmi_by_hand():
    assert purity(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 1, 1])) == pytest.approx(0.8)
    # Renaming ids changes nothing.
    assert normalized_mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 7, 7])) == pytest.approx(1.0)
    # Independent labelings share no information.
    assert normalized_mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0)
    # pred halves, truth thirds: I = (2/3) ln 2, H(pred) = ln 2, H(true) = ln 3.
    pred, true = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    expected = (2 / 3) * math.log(2) / ((math.log(2) + math.log(3)) / 2)
    assert normalized_mutual_information(pred, true) == pytest.approx(expected)
    assert normalized_mutual_information(true, pred) == pytest.approx(expected)
    assert purity(pred, true) == pytest.approx(4 / 6)
    assert purity(true, pred) == pytest.approx(5 / 6)  # the middle third straddles both halves
    # Splitting classes into smaller clusters never hurts purity.
    assert purity(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 0, 1, 1])) == 1.0
    assert normalized_mutual_information(torch.zeros(4), torch.zeros(4)) == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="k must be"):
        kmeans(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(5, 2), 2, init=torch.zeros(3, 2))
    with pytest.raises(ValueError):
        match_clusters(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError):
        purity(torch.tensor([0, 1]), torch.tensor([0]))


def test_restarts_keep_the_lowest_inertia():
    points, _ = blobs(k=8, per=20, spread=1.5)  # overlapping enough that single starts disagree
    single = kmeans(points, 8, generator=torch.Generator().manual_seed(0))
    best = kmeans(points, 8, generator=torch.Generator().manual_seed(0), n_init=5)
    # The first restart draws exactly what the single start drew, so the best can only be as good or better.
    assert best.inertia <= single.inertia + 1e-6
    again = recluster(points, 8, generator=torch.Generator().manual_seed(0), n_init=5)
    assert torch.equal(again.labels, best.labels)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(points, 8, n_init=0)
