"""Metric functions for `travel eval`: pixel scores, retrieval, a classifier two-sample test, KID and FID. Pure."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from torch import nn

# Images here follow the package convention: [N, 3, H, W] float tensors in [-1, 1].


def _check_pair(translation: torch.Tensor, target: torch.Tensor) -> None:
    if translation.ndim != 4 or translation.shape != target.shape:
        raise ValueError(f"expected two [N, C, H, W] tensors of one shape, got {tuple(translation.shape)} and {tuple(target.shape)}")
    if translation.shape[0] == 0:
        raise ValueError("no images to compare")


def l1_distance(translation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image on the [0, 1] intensity scale: [N]. 0 = identical, 1 = black vs white."""
    _check_pair(translation, target)
    return (translation.float() - target.float()).abs().mean(dim=(1, 2, 3)) / 2  # [N]; /2 maps [-1, 1] to [0, 1]


def ssim(translation: torch.Tensor, target: torch.Tensor, *, window_size: int = 11) -> torch.Tensor:
    """Structural similarity per image (kornia, Gaussian window, [0, 1] scale): [N]. 1 = identical."""
    _check_pair(translation, target)
    side = min(translation.shape[-2:])
    window = min(window_size, side if side % 2 else side - 1)  # kornia needs an odd window that fits the image
    if window < 3:
        raise ValueError(f"images of {side} pixels are too small for SSIM")
    a = (translation.float().clamp(-1, 1) + 1) / 2
    b = (target.float().clamp(-1, 1) + 1) / 2
    return kornia_ssim(a, b, window, max_val=1.0).mean(dim=(1, 2, 3))  # [N]


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """For each query image, the index of the key image nearest by L2 distance over all pixels: [N] long."""
    if queries.ndim < 2 or keys.ndim < 2 or queries.shape[1:] != keys.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must share the per-item shape")
    keys_flat = keys.reshape(keys.shape[0], -1).double()  # [M, D]
    key_norms = (keys_flat * keys_flat).sum(dim=1)  # [M]
    found = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk].reshape(-1, keys_flat.shape[1]).double()  # [n, D]
        # ||q||^2 is the same for every key of one query, so argmin of ||k||^2 - 2 q.k is the nearest key.
        distance = key_norms[None, :] - 2 * q @ keys_flat.T  # [n, M]
        found.append(distance.argmin(dim=1))
    return torch.cat(found)


def retrieval_accuracy(translation: torch.Tensor, target: torch.Tensor) -> float:
    """Share of translations whose nearest target (pixel L2, among all targets) is their own pair (row i <-> row i)."""
    _check_pair(translation, target)
    nearest = nearest_neighbours(translation, target)
    return float((nearest == torch.arange(target.shape[0])).float().mean())


# ---------------------------------------------------------------------------------------------
# Classifier two-sample test (C2ST): can a small CNN tell real targets from translations on held-out images?


class _TwoSampleNet(nn.Module):
    """A small CNN: three stride-2 convolutions, global average pooling, one logit (real = positive)."""

    def __init__(self, width: int = 16, outputs: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 4 * width, 3, 1, 1), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(4 * width, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.body(images).mean(dim=(2, 3)))  # [N, outputs]
        return logits[:, 0] if logits.shape[1] == 1 else logits  # [N] for the two-sample test


def style_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, k: int, seed: int = 0, size: int = 64, steps: int = 600,
    batch_size: int = 32, lr: float = 2e-3,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A small CNN (the two-sample test's, with k outputs) trained to name the style of real images.

    images: [N, 3, H, W] in [-1, 1]; labels: [N] in 0..k-1. Returns classify(images) -> [M] style ids. Balanced
    batches (as many images of every style), seeded, on the CPU, leaving the global RNG untouched.
    """
    if images.ndim != 4 or images.shape[0] != labels.shape[0] or k < 2:
        raise ValueError("style_classifier needs [N, 3, H, W] images, N labels and k >= 2")
    side = min(size, *images.shape[-2:])
    images = _prepare(images, side)
    rng = torch.Generator().manual_seed(seed)
    by_style = [torch.nonzero(labels == s).flatten() for s in range(k)]
    if any(len(members) == 0 for members in by_style):
        raise ValueError("every style needs at least one image")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _TwoSampleNet(outputs=k)
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
        per_style = max(1, batch_size // k)
        for _ in range(steps):
            pick = torch.cat([members[torch.randint(0, len(members), (per_style,), generator=rng)] for members in by_style])
            loss = F.cross_entropy(net(images[pick]), labels[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()

    @torch.no_grad()
    def classify(batch: torch.Tensor) -> torch.Tensor:
        batch = _prepare(batch, side)
        return torch.cat([net(batch[i:i + 256]).argmax(dim=1) for i in range(0, batch.shape[0], 256)])

    return classify


def two_sample_accuracy(
    real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0, size: int = 64, steps: int = 300, batch_size: int = 32,
    lr: float = 2e-3, groups: torch.Tensor | None = None,
) -> dict[str, float]:
    """Held-out accuracy of a small CNN trained to tell `real` from `fake` ([N, 3, H, W] each, in [-1, 1]).

    Both sets are cut to the same count (so chance is exactly 0.5), shuffled with `seed`, and split in halves:
    the classifier trains on one half of each and is scored on the other. 0.5 = indistinguishable,
    1.0 = always told apart. Deterministic for a seed (runs on the CPU, leaves the global RNG untouched).

    groups: for a paired set (real[i] and fake[i] show the same item), a group id per pair [N]. Items of one group
    are near-duplicates (the skin tones of one emoji): the halves are then cut between whole groups, and real[i] and
    fake[i] fall in the same half, so the classifier cannot pass by remembering one drawing from its sibling in the
    other half. The cut is the group boundary nearest the middle, so the halves may differ by part of a group.
    """
    if real.ndim != 4 or fake.ndim != 4 or real.shape[1] != 3 or fake.shape[1] != 3:
        raise ValueError(f"expected [N, 3, H, W] images, got {tuple(real.shape)} and {tuple(fake.shape)}")
    count = min(real.shape[0], fake.shape[0])
    if count < 4:
        raise ValueError(f"the two-sample test needs at least 4 images per set, got {count}")
    if steps < 1 or batch_size < 2 or size < 8:
        raise ValueError("two-sample test: steps >= 1, batch_size >= 2 and size >= 8 are required")
    rng = torch.Generator().manual_seed(seed)
    side = min(size, *real.shape[-2:], *fake.shape[-2:])  # never upsample: it would only blur both sets alike
    if groups is None:
        real = _prepare(real[torch.randperm(real.shape[0], generator=rng)[:count]], side)  # [count, 3, side, side]
        fake = _prepare(fake[torch.randperm(fake.shape[0], generator=rng)[:count]], side)
        half = count // 2
    else:
        order = _group_split_order(groups, real.shape[0], fake.shape[0], rng)
        half = _group_cut(groups[order])
        real, fake = _prepare(real[order], side), _prepare(fake[order], side)
    train_x = torch.cat([real[:half], fake[:half]])  # [2 * half, 3, side, side]
    train_y = torch.cat([torch.ones(half), torch.zeros(half)])
    test_x = torch.cat([real[half:], fake[half:]])
    test_y = torch.cat([torch.ones(count - half), torch.zeros(count - half)])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _TwoSampleNet()
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
        per_class = max(1, min(batch_size // 2, half))
        for _ in range(steps):
            # Balanced batches: as many real as fake images in every step.
            pick_real = torch.randint(0, half, (per_class,), generator=rng)
            pick_fake = torch.randint(half, 2 * half, (per_class,), generator=rng)
            pick = torch.cat([pick_real, pick_fake])
            images = train_x[pick]
            flip = torch.rand(pick.shape[0], generator=rng) < 0.5  # mirror half the batch: a little less memorising
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = F.binary_cross_entropy_with_logits(net(images), train_y[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            test_logits = torch.cat([net(test_x[i:i + 256]) for i in range(0, test_x.shape[0], 256)])
            train_logits = torch.cat([net(train_x[i:i + 256]) for i in range(0, train_x.shape[0], 256)])
    accuracy = float(((test_logits > 0).float() == test_y).float().mean())
    train_accuracy = float(((train_logits > 0).float() == train_y).float().mean())
    return {"accuracy": accuracy, "train_accuracy": train_accuracy, "held_out": int(test_y.shape[0]), "size": side}


def _group_split_order(groups: torch.Tensor, n_real: int, n_fake: int, rng: torch.Generator) -> torch.Tensor:
    """Rows in a seeded random order of whole groups (each group's rows together, shuffled within): [N]."""
    if groups.ndim != 1 or not n_real == n_fake == groups.shape[0]:
        raise ValueError(f"groups need one id per pair of a paired set: {n_real} real, {n_fake} fake, "
                         f"{tuple(groups.shape)} ids")
    ids, group_of_row = torch.unique(groups, return_inverse=True)
    if ids.shape[0] < 2:
        raise ValueError("a group-held-out two-sample test needs at least 2 groups")
    group_rank = torch.empty(ids.shape[0], dtype=torch.long)
    group_rank[torch.randperm(ids.shape[0], generator=rng)] = torch.arange(ids.shape[0])
    within = torch.rand(groups.shape[0], generator=rng)  # in [0, 1): orders rows inside a group, never across
    return torch.argsort(group_rank[group_of_row].double() + within.double())


def _group_cut(ordered_groups: torch.Tensor) -> int:
    """The group boundary of `ordered_groups` [N] (whole groups in sequence) nearest N / 2."""
    boundaries = torch.nonzero(ordered_groups[1:] != ordered_groups[:-1]).flatten() + 1
    middle = ordered_groups.shape[0] / 2
    return int(boundaries[torch.argmin((boundaries.double() - middle).abs())])


def _prepare(images: torch.Tensor, side: int) -> torch.Tensor:
    """Resize the shorter side to `side` (antialiased) and centre-crop a square: [N, 3, side, side]."""
    images = images.float()
    h, w = images.shape[-2:]
    if min(h, w) != side:
        scale = side / min(h, w)
        images = F.interpolate(images, size=(max(side, round(h * scale)), max(side, round(w * scale))),
                               mode="bilinear", antialias=True, align_corners=False)
    h, w = images.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top:top + side, left:left + side].contiguous()


# ---------------------------------------------------------------------------------------------
# KID and FID on feature arrays (Inception pool features in practice; any [N, D] arrays here).


def kid(
    features_a: np.ndarray, features_b: np.ndarray, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel (a.b / D + 1)^3, averaged over random subsets.

    features_*: [N, D] and [M, D]. Returns {"mean", "std"} over subsets. About 0 for one distribution
    (it can dip slightly below 0: the estimate is unbiased); larger for more different ones.
    """
    a, b = _features(features_a), _features(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    m = min(a.shape[0], b.shape[0], subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]  # [m, D]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3  # [m, m]
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2 * k_xy.mean())
    values_arr = np.asarray(values)
    return {"mean": float(values_arr.mean()), "std": float(values_arr.std())}


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ([N, D], [M, D]):
    ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)). Biased upwards for small N."""
    a, b = _features(features_a), _features(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    diff = a.mean(axis=0) - b.mean(axis=0)
    xa, xb = a - a.mean(axis=0), b - b.mean(axis=0)  # centred: S = X^T X / (n - 1)
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    trace_a, trace_b = (xa * xa).sum() / na, (xb * xb).sum() / nb
    return float(max(0.0, diff @ diff + trace_a + trace_b - 2 * trace_sqrt_product(xa, xb, na=na, nb=nb)))


def trace_sqrt_product(xa: np.ndarray, xb: np.ndarray, *, na: int, nb: int) -> float:
    """Tr((S_a S_b)^(1/2)) for S_a = xa^T xa / na and S_b = xb^T xb / nb, without a general matrix square root.

    S_a S_b is similar to the PSD matrix S_a^(1/2) S_b S_a^(1/2), so the trace is the sum of the square roots of
    its eigenvalues. With fewer samples than dimensions those nonzero eigenvalues are the squared singular values
    of xa xb^T / sqrt(na nb) (an [N, M] matrix), so the trace is its nuclear norm: exact and cheap, where
    scipy.linalg.sqrtm on the singular [D, D] product is slow and needs an epsilon.
    """
    dim = xa.shape[1]
    if min(xa.shape[0], xb.shape[0]) <= dim:
        return float(np.linalg.svd(xa @ xb.T / np.sqrt(na * nb), compute_uv=False).sum())
    cov_a, cov_b = xa.T @ xa / na, xb.T @ xb / nb
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T  # S_a^(1/2), [D, D]
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def _features(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected [N, D] features, got shape {array.shape}")
    return array
