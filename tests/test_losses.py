"""Loss functions against values computed by hand (docs/METHOD.md, "Losses" and "Self-conditioning")."""

from __future__ import annotations

import math

import pytest
import torch

from travel.losses import (
    anchor_d_loss,
    anchor_distance,
    anchor_g_loss,
    margin_loss,
    r1_penalty,
    rotation_loss,
    travel_loss,
    triplet_d_loss,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(value: torch.Tensor, expected: float) -> bool:
    return math.isclose(float(value.detach()), expected, rel_tol=1e-12, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# The anchor (realism) loss.


def test_anchor_distance_is_the_mean_squared_entry():
    embedding = t([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]])  # [2, 3]
    anchor = t([1.0, 0.0, 0.0])
    # (0 + 4 + 4) / 3 and (1 + 0 + 9) / 3
    assert torch.allclose(anchor_distance(embedding, anchor), t([8 / 3, 10 / 3]))


def test_vec_len_one_is_least_squares_with_a_hinge_on_fakes():
    # With L = 1 the discriminator emits a scalar s: d = (s - c)^2, the least-squares GAN loss, and fakes
    # only count while (s - c)^2 < m.
    real = t([[1.0], [-2.0]])  # d = 1, 4
    fake = t([[0.5], [3.0]])  # d = 0.25, 9
    anchor = t([0.0])
    terms = anchor_d_loss(real, fake, anchor, margin=1.0)
    assert close(terms["d_real"], (1 + 4) / 2)
    assert close(terms["d_fake"], (0.75 + 0.0) / 2)  # relu(1 - 0.25), relu(1 - 9)
    assert close(anchor_g_loss(fake, anchor), (0.25 + 9) / 2)


def test_anchor_loss_with_an_anchor_away_from_the_origin():
    real = t([[2.0], [3.0]])
    fake = t([[2.5], [0.0]])
    anchor = t([2.0])  # d(real) = 0, 1; d(fake) = 0.25, 4
    terms = anchor_d_loss(real, fake, anchor, margin=2.0)
    assert close(terms["d_real"], 0.5)
    assert close(terms["d_fake"], (1.75 + 0.0) / 2)
    assert close(anchor_g_loss(fake, anchor), 2.125)


def test_anchor_loss_with_one_anchor_per_sample():
    real = t([[1.0, 1.0], [0.0, 0.0]])  # [N, L]
    anchors = t([[1.0, 1.0], [2.0, 0.0]])  # [N, L]: sample 0 sits on its anchor, sample 1 is 2 away on one axis
    terms = anchor_d_loss(real, real, anchors, margin=1.0)
    assert close(terms["d_real"], (0.0 + 2.0) / 2)  # d = 0 and 4 / 2
    assert close(terms["d_fake"], (1.0 + 0.0) / 2)


def test_fakes_beyond_the_margin_give_no_gradient():
    fake = t([[3.0], [0.5]]).requires_grad_(True)
    terms = anchor_d_loss(t([[0.0], [0.0]]), fake, t([0.0]), margin=1.0)
    terms["d_fake"].backward()
    # Only the fake inside the margin is pushed out: d/ds relu(1 - s^2) / 2 = -s at s = 0.5.
    assert torch.allclose(fake.grad, t([[0.0], [-0.5]]))


def test_triplet_variant_over_in_batch_pairs():
    real = t([[1.0], [0.0]])  # d = 1, 0
    fake = t([[2.0], [0.5], [0.0]])  # d = 4, 0.25, 0
    loss = triplet_d_loss(real, fake, t([0.0]), margin=1.0)
    # relu(d_real_i - d_fake_j + 1) for all 2 x 3 pairs
    pairs = [max(0.0, r - f + 1) for r in (1.0, 0.0) for f in (4.0, 0.25, 0.0)]
    assert pairs == [0.0, 1.75, 2.0, 0.0, 0.75, 1.0]
    assert close(loss, sum(pairs) / 6)


def test_triplet_is_zero_when_every_fake_is_a_margin_further_than_every_real():
    real = t([[0.1, 0.0], [0.0, 0.2]])
    fake = t([[3.0, 3.0], [-4.0, 2.0]])
    assert float(triplet_d_loss(real, fake, t([0.0, 0.0]), margin=1.0)) == 0.0


# ---------------------------------------------------------------------------------------------
# The TraVeL (transformation-vector) loss.

SOURCE = t([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # [3, 2]: pairs (0,1), (0,2), (1,2)
# Pair vectors v: [1, -1], [1, 0], [0, 1]; ||v||^2 / L = 1, 0.5, 0.5 -> mean 2/3.


def test_travel_is_zero_for_identical_transformation_vectors():
    shifted = SOURCE + t([5.0, -3.0])  # the same vectors between every pair
    terms = travel_loss(SOURCE, shifted, dist_weight=1.0)
    assert close(terms["travel_cos"], 0.0)
    assert close(terms["travel_dist"], 0.0)


def test_travel_is_two_for_opposite_transformation_vectors():
    terms = travel_loss(SOURCE, -SOURCE, dist_weight=1.0)
    assert close(terms["travel_cos"], 2.0)
    # v - v' = 2v: ||2v||^2 / L averages 4 * 2/3.
    assert close(terms["travel_dist"], 8 / 3)


def test_travel_distance_part_sees_scale_the_cosine_ignores():
    terms = travel_loss(SOURCE, 3 * SOURCE, dist_weight=0.5)
    assert close(terms["travel_cos"], 0.0)
    assert close(terms["travel_dist"], 0.5 * 4 * 2 / 3)  # v - 3v = -2v


def test_travel_orthogonal_vectors():
    source = t([[1.0, 0.0], [0.0, 0.0]])  # v = [1, 0]
    translation = t([[0.0, 1.0], [0.0, 0.0]])  # v' = [0, 1]
    terms = travel_loss(source, translation, dist_weight=1.0)
    assert close(terms["travel_cos"], 1.0)
    assert close(terms["travel_dist"], 1.0)  # ||[1, -1]||^2 / 2


def test_travel_mixes_pairs():
    # Pair (0,1) keeps its direction, pair (0,2) flips, pair (1,2) turns by 90 degrees.
    source = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # v01 = [-1, 0], v02 = [0, -1], v12 = [1, -1]
    translation = t([[0.0, 0.0], [2.0, 0.0], [0.0, -1.0]])  # v'01 = [-2, 0], v'02 = [0, 1], v'12 = [2, 1]
    cos12 = (1 * 2 + (-1) * 1) / (math.sqrt(2) * math.sqrt(5))
    terms = travel_loss(source, translation, dist_weight=1.0)
    assert close(terms["travel_cos"], ((1 - 1) + (1 + 1) + (1 - cos12)) / 3)
    # ||v - v'||^2 / 2: [1, 0] -> 0.5, [0, -2] -> 2, [-1, -2] -> 2.5
    assert close(terms["travel_dist"], (0.5 + 2.0 + 2.5) / 3)


def test_travel_needs_pairs_of_one_shape():
    with pytest.raises(ValueError):
        travel_loss(SOURCE[:1], SOURCE[:1], dist_weight=1.0)
    with pytest.raises(ValueError):
        travel_loss(SOURCE, SOURCE[:2], dist_weight=1.0)


def test_travel_gradient_is_finite_for_a_collapsed_translation():
    translation = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)  # every v' = 0
    terms = travel_loss(SOURCE, translation, dist_weight=1.0)
    (terms["travel_cos"] + terms["travel_dist"]).backward()
    assert torch.isfinite(translation.grad).all()
    assert close(terms["travel_cos"], 1.0)  # cos of a zero vector counts as 0


# ---------------------------------------------------------------------------------------------
# The margin loss.


def test_margin_is_zero_beyond_the_margin():
    far = t([[0.0, 0.0], [2.0, 0.0]])  # ||v||^2 / L = 2 >= delta
    assert float(margin_loss(far, delta=1.0)) == 0.0
    assert float(margin_loss(far, delta=2.0)) == 0.0  # exactly at the margin


def test_margin_value_inside_the_margin():
    near = t([[0.0, 0.0], [0.5, 0.5]])  # ||v||^2 / L = 0.25
    assert close(margin_loss(near, delta=1.0), 0.75)


def test_margin_averages_over_pairs():
    source = t([[0.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # distances 1, 4.5, 2.5
    assert close(margin_loss(source, delta=3.0), (2.0 + 0.0 + 0.5) / 3)


def test_margin_of_a_collapsed_embedding_is_delta():
    assert close(margin_loss(torch.ones(4, 5, dtype=torch.float64), delta=1.5), 1.5)


# ---------------------------------------------------------------------------------------------
# Rotation and R1.


def test_rotation_loss_of_uniform_logits_is_log_four():
    assert close(rotation_loss(torch.zeros(3, 4, dtype=torch.float64), torch.tensor([0, 1, 3])), math.log(4))


def test_rotation_loss_by_hand():
    logits = t([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 3])
    first = -(2.0 - math.log(math.exp(2.0) + 3))
    second = -(0.0 - math.log(math.e + 3))
    assert close(rotation_loss(logits, labels), (first + second) / 2)


def test_r1_penalty_of_a_linear_function():
    # f(x) = <w, x> per image: the gradient is w everywhere, so the penalty is ||w||^2.
    weight = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]], dtype=torch.float64)  # [1, 2, 2]
    images = torch.randn(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)  # [N, C, H, W]
    scores = (images * weight).flatten(1).sum(dim=1)  # [N]
    assert close(r1_penalty(scores, images), 1 + 4 + 0.25)


def test_r1_penalty_of_a_quadratic_function_is_differentiable():
    # f(x) = sum(x^2): gradient 2x, penalty mean_n sum 4 x^2.
    images = t([[[[1.0, 2.0]]], [[[0.0, 3.0]]]]).requires_grad_(True)  # [2, 1, 1, 2]
    penalty = r1_penalty(images.pow(2).flatten(1).sum(dim=1), images)
    assert close(penalty, (4 * (1 + 4) + 4 * 9) / 2)
    penalty.backward()  # create_graph=True: the penalty itself trains D
    assert torch.allclose(images.grad, 8 * images.detach() / 2)


def test_losses_do_not_modify_their_inputs():
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    before = (real.clone(), fake.clone())
    anchor_d_loss(real, fake, torch.zeros(3), margin=1.0)
    travel_loss(real, fake, dist_weight=1.0)
    margin_loss(real, delta=1.0)
    assert torch.equal(real, before[0]) and torch.equal(fake, before[1])
