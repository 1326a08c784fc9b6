"""The 2D mode-coverage benchmark (docs/METHOD.md, "The 2D mode-coverage benchmark"): Gaussian mixtures, tiny MLP GANs, three discriminators."""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, fields
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from travel.train.clustering import KMeansResult, assign, cluster_frequencies, normalized_mutual_information, purity, recluster
from travel.errors import ConfigError
from travel.losses import anchor_d_loss, anchor_g_loss

DATASETS = ("ring", "grid")
VARIANTS = ("scalar", "siamese", "selfcond")
VARIANT_TITLES = {
    "scalar": "scalar D, non-saturating loss",
    "siamese": "Siamese D, anchor loss",
    "selfcond": "Siamese D + self-conditioning",
}

# ---------------------------------------------------------------------------------------------
# Data: the two mixtures of docs/METHOD.md, "The 2D mode-coverage benchmark".


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic 2D Gaussians."""

    name: str
    means: torch.Tensor  # [M, 2]
    std: float

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]


def make_mixture(name: str, *, radius: float = 1.0) -> Mixture:
    """ring: 8 modes on a circle of `radius`, variance 1e-4. grid: 25 modes at (2i - 4, 2j - 4), variance 0.0025."""
    if name == "ring":
        if not radius > 0:
            raise ConfigError(f"ring radius must be > 0, got {radius}")
        angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return Mixture(name="ring", means=means.float(), std=math.sqrt(1e-4))
    if name == "grid":
        axis = 2.0 * torch.arange(5) - 4.0
        means = torch.cartesian_prod(axis, axis)
        return Mixture(name="grid", means=means.float(), std=math.sqrt(0.0025))
    raise ConfigError(f"unknown 2D dataset {name!r}; choose one of {', '.join(DATASETS)}")


def sample_mixture(mixture: Mixture, count: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """count points [count, 2] and the mode each came from [count] (int64)."""
    modes = torch.randint(mixture.num_modes, (count,), generator=generator)
    points = mixture.means[modes] + mixture.std * torch.randn(count, 2, generator=generator)
    return points, modes


# ---------------------------------------------------------------------------------------------
# Metrics (pure).


@dataclass(frozen=True)
class ModeMetrics:
    """How well samples cover a mixture. A sample "hits" a mode when it lies within 3 sd (Euclidean) of its mean."""

    modes: int  # modes hit by at least one sample
    high_quality: float  # share of samples within 3 sd of some mode, in [0, 1]
    reverse_kl: float  # KL(q || uniform) in nats, q = share of samples whose nearest mode is each mode


def mode_metrics(samples: torch.Tensor, mixture: Mixture) -> ModeMetrics:
    """samples: [N, 2]. reverse_kl = sum_i q_i log(q_i * M) over modes with q_i > 0: 0 when the samples spread evenly
    over the modes, log M when they all sit nearest to one. "Reverse" because the model's distribution comes first,
    so it is finite when modes are missing; every sample counts, high-quality or not."""
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be [N>0, 2], got {tuple(samples.shape)}")
    dist = torch.cdist(samples.double(), mixture.means.double())  # [N, M]
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist < 3 * mixture.std
    hit = torch.zeros(mixture.num_modes, dtype=torch.bool)
    hit[nearest[good]] = True
    q = torch.bincount(nearest, minlength=mixture.num_modes).double() / samples.shape[0]
    q = q[q > 0]
    kl = float((q * (q * mixture.num_modes).log()).sum())
    return ModeMetrics(modes=int(hit.sum()), high_quality=float(good.double().mean()), reverse_kl=max(kl, 0.0))


# ---------------------------------------------------------------------------------------------
# Settings.


@dataclass(frozen=True)
class ModesConfig:
    """One row of the benchmark on one dataset. The rows share the budget (steps, batch, networks, data) and differ
    only where tuning found them to (learning rate and margin; see ROW_DEFAULTS)."""

    dataset: Literal["ring", "grid"] = "ring"
    radius: float = 1.0  # ring radius: the paper's r = 1 (its code uses 2)
    steps: int = 3000  # generator updates (one discriminator update each)
    batch_size: int = 128  # real and generated samples per step, per seed
    train_points: int = 10_000  # a fixed training set per seed, as in the paper's code (finite data)
    z_dim: int = 16  # generator noise
    g_width: int = 64  # hidden units of the generator MLP
    g_layers: int = 3  # hidden layers of the generator MLP
    d_width: int = 64  # hidden units of the discriminator MLP (its trunk features are the last hidden layer)
    d_layers: int = 3  # hidden layers of the discriminator MLP
    vec_len: int = 64  # Siamese discriminator output length
    margin: float = 1.0  # anchor-loss margin m (DESIGN's default; a 64-d Lipschitz-1 D on 2D points rarely reaches it)
    lr_g: float = 2e-3  # far above the image defaults (1e-4 / 4e-4): 3,000 steps is a short run
    lr_d: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.9
    lr_decay: bool = True  # both learning rates fall linearly to 0 over the run, which sharpens the final modes
    # The evaluated generator is an EMA of G's weights (0 = the raw G). This is the cap on its decay: the warm-up
    # decay (1 + t) / (10 + t) stays below 0.999 until step ~9,000, so a 3,000-step run averages its last few
    # hundred steps whatever the cap.
    ema: float = 0.999
    clusters: int = 16  # self-conditioning: k
    recluster_every: int = 500  # steps between reclusterings
    cluster_points: int = 2000  # the fixed subset of the training set that k-means runs on
    anchor_scale: float = 1.0  # cluster k's anchor is anchor_scale * e_k in R^vec_len
    eval_samples: int = 10_000  # samples per seed for the metrics

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown 2D dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        positive = ("steps", "batch_size", "train_points", "z_dim", "g_width", "g_layers", "d_width", "d_layers",
                    "vec_len", "clusters", "recluster_every", "cluster_points", "eval_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("radius", "lr_g", "lr_d", "margin", "anchor_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 <= self.ema < 1):
            raise ConfigError("beta1, beta2 and ema must lie in [0, 1)")
        if self.cluster_points > self.train_points:
            raise ConfigError(f"cluster_points ({self.cluster_points}) cannot exceed train_points ({self.train_points})")
        if self.vec_len < self.clusters:
            raise ConfigError(f"self-conditioning's one-hot anchors need vec_len >= clusters, got {self.vec_len} < {self.clusters}")
        if self.clusters > self.cluster_points:
            raise ConfigError(f"clusters ({self.clusters}) cannot exceed cluster_points ({self.cluster_points})")

    @property
    def mixture(self) -> Mixture:
        return make_mixture(self.dataset, radius=self.radius)


# What tuning chose (docs/BENCHMARKS.md has every measurement). k is about twice the number of modes, as in the
# paper, so the method does not need the true count. Each row got the setting that recovered the most modes on
# seeds 0-2 or 0-4, then the most high-quality samples, from lr_g = lr_d in {1e-3, 2e-3, 4e-3} (8e-3 too for the scalar
# row, whose best was at the edge) and, for the Siamese rows, margin m in {1, 0.3, 0.1}.
DEFAULTS: dict[str, dict[str, object]] = {
    "ring": {"clusters": 16},
    "grid": {"clusters": 50},
}
ROW_DEFAULTS: dict[tuple[str, str], dict[str, object]] = {
    ("ring", "scalar"): {"lr_g": 4e-3, "lr_d": 4e-3},
    ("ring", "siamese"): {"lr_g": 2e-3, "lr_d": 2e-3, "margin": 1.0},
    ("ring", "selfcond"): {"lr_g": 2e-3, "lr_d": 2e-3, "margin": 0.1},
    ("grid", "scalar"): {"lr_g": 8e-3, "lr_d": 8e-3},
    ("grid", "siamese"): {"lr_g": 4e-3, "lr_d": 4e-3, "margin": 0.1},
    ("grid", "selfcond"): {"lr_g": 2e-3, "lr_d": 2e-3, "margin": 0.1},
}


def default_config(dataset: str, variant: str | None = None, **overrides: object) -> ModesConfig:
    """The benchmark's settings for a dataset (and row), then overrides (unknown names are a ConfigError)."""
    known = {f.name for f in fields(ModesConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    if dataset not in DEFAULTS:
        raise ConfigError(f"unknown 2D dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    row = ROW_DEFAULTS.get((dataset, variant), {}) if variant is not None else {}
    return ModesConfig(dataset=dataset, **{**DEFAULTS[dataset], **row, **overrides})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Networks: S independent MLPs (one per seed) evaluated together with batched matrix products, so ten seeds cost
# about as much as one. Each seed draws its own initial weights from its own generator.


class SeedLinear(nn.Module):
    """S independent linear layers: x [S, N, in] -> [S, N, out]. PyTorch's default init, per seed."""

    def __init__(self, fan_in: int, fan_out: int, *, generators: Sequence[torch.Generator], spectral: bool) -> None:
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        weights, biases, us = [], [], []
        for gen in generators:
            weights.append((torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound)
            biases.append((torch.rand(fan_out, generator=gen) * 2 - 1) * bound)
            if spectral:
                us.append(F.normalize(torch.randn(fan_out, generator=gen), dim=0))
        self.weight = nn.Parameter(torch.stack(weights))  # [S, out, in]
        self.bias = nn.Parameter(torch.stack(biases))  # [S, out]
        self.spectral = spectral
        if spectral:
            self.register_buffer("u", torch.stack(us))  # [S, out]: power-iteration state, as in torch's spectral_norm

    def effective_weight(self) -> torch.Tensor:
        if not self.spectral:
            return self.weight
        weight = self.weight  # [S, out, in]
        if self.training and torch.is_grad_enabled():
            # One power iteration per training forward pass (what torch.nn.utils.spectral_norm does).
            with torch.no_grad():
                v = F.normalize(torch.bmm(self.u[:, None, :], weight).squeeze(1), dim=1)  # [S, in]
                self.u.copy_(F.normalize(torch.bmm(weight, v[:, :, None]).squeeze(2), dim=1))
        u = self.u.clone()  # later forward passes update the buffer in place; this graph keeps its own copy
        v = F.normalize(torch.bmm(u[:, None, :], weight).squeeze(1), dim=1).detach()  # [S, in]
        sigma = (u * torch.bmm(weight, v[:, :, None]).squeeze(2)).sum(1)  # [S]; gradient flows through the weight
        return weight / sigma[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None, :], x, self.effective_weight().transpose(1, 2))


class SeedMLP(nn.Module):
    """S independent MLPs: hidden layers with an activation, then a linear head. `features` is the last hidden layer."""

    def __init__(
        self, sizes: Sequence[int], *, generators: Sequence[torch.Generator], spectral: bool, leaky: bool
    ) -> None:
        super().__init__()
        self.hidden = nn.ModuleList(
            SeedLinear(a, b, generators=generators, spectral=spectral) for a, b in zip(sizes[:-2], sizes[1:-1])
        )
        self.head = SeedLinear(sizes[-2], sizes[-1], generators=generators, spectral=spectral)
        self.leaky = leaky

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [S, N, in] -> [S, N, hidden]."""
        for layer in self.hidden:
            x = F.leaky_relu(layer(x), 0.2) if self.leaky else F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cluster_anchors(clusters: int, vec_len: int, *, scale: float) -> torch.Tensor:
    """One anchor per cluster, scale * e_k: [K, L]. All pairs equally far apart (scale * sqrt 2), all at the same
    distance from the origin, so no cluster is favoured and no two clusters' targets overlap. Needs L >= K."""
    if vec_len < clusters:
        raise ConfigError(f"self-conditioning with one-hot anchors needs vec_len >= clusters, got {vec_len} < {clusters}")
    return scale * torch.eye(clusters, vec_len)


# ---------------------------------------------------------------------------------------------
# Losses of the three rows: the scalar row is the non-saturating GAN; the Siamese rows use the package's own
# anchor losses, with one anchor (the origin) or one anchor per cluster.


def discriminator_loss(
    variant: str,
    real_out: torch.Tensor,
    fake_out: torch.Tensor,
    *,
    real_anchor: torch.Tensor,
    fake_anchor: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """real_out, fake_out: [N, 1] logits (scalar) or [N, L] embeddings; anchors: [L] or [N, L] (unused by scalar)."""
    if variant == "scalar":
        return F.softplus(-real_out).mean() + F.softplus(fake_out).mean()
    parts = anchor_d_loss(real_out, fake_out, real_anchor, margin=margin, fake_anchor=fake_anchor)
    return parts["d_real"] + parts["d_fake"]


def generator_loss(variant: str, fake_out: torch.Tensor, *, fake_anchor: torch.Tensor) -> torch.Tensor:
    if variant == "scalar":
        return F.softplus(-fake_out).mean()
    return anchor_g_loss(fake_out, fake_anchor)


# ---------------------------------------------------------------------------------------------
# Training.


@dataclass(frozen=True)
class SeedResult:
    """One trained seed of one variant."""

    variant: str
    seed: int
    metrics: ModeMetrics
    cluster_purity: float | None  # self-conditioning: purity of the final clusters of the training set vs true modes
    cluster_nmi: float | None  # ... and their normalised mutual information with the true modes
    seconds: float  # wall clock of the batch of seeds this seed was trained in, divided by its size
    lr_g: float
    lr_d: float
    margin: float | None  # the anchor-loss margin (None: the scalar row has none)


ProgressFn = Callable[[str, int, int], None]  # (variant, step, total)


def train_variant(
    config: ModesConfig,
    variant: str,
    *,
    seeds: Sequence[int],
    progress_fn: ProgressFn | None = None,
    return_samples: bool = False,
) -> list[SeedResult] | tuple[list[SeedResult], torch.Tensor]:
    """Train one GAN per seed (all seeds at once, batched) and score each. Each seed has its own random streams.

    With return_samples, also return the evaluated samples [S, eval_samples, 2].
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if not seeds:
        raise ConfigError("need at least one seed")
    start = time.perf_counter()
    cfg = config
    mixture = cfg.mixture
    num_seeds = len(seeds)
    selfcond = variant == "selfcond"
    k = cfg.clusters if selfcond else 0
    gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    data = [sample_mixture(mixture, cfg.train_points, generator=gen) for gen in gens]
    train = torch.stack([points for points, _ in data])  # [S, T, 2]
    train_modes = torch.stack([modes for _, modes in data])  # [S, T]

    out = 1 if variant == "scalar" else cfg.vec_len
    g_sizes = [cfg.z_dim + k] + [cfg.g_width] * cfg.g_layers + [2]
    d_sizes = [2] + [cfg.d_width] * cfg.d_layers + [out]
    generator = SeedMLP(g_sizes, generators=gens, spectral=False, leaky=False)
    discriminator = SeedMLP(d_sizes, generators=gens, spectral=True, leaky=True)
    ema = copy.deepcopy(generator).requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), foreach=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), foreach=True)

    schedules = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / cfg.steps if cfg.lr_decay else 1.0)
        for opt in (opt_g, opt_d)
    ]
    origin = torch.zeros(cfg.vec_len)
    anchors = cluster_anchors(k, cfg.vec_len, scale=cfg.anchor_scale) if selfcond else None
    clusterings: list[KMeansResult | None] = [None] * num_seeds
    labels = torch.zeros(num_seeds, cfg.train_points, dtype=torch.int64)  # [S, T] cluster id of every training point
    frequencies = torch.ones(num_seeds, max(k, 1))  # [S, K]

    def generator_input(noise: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([noise, F.one_hot(ids, k).float()], dim=-1) if selfcond else noise

    # Losses are per-seed means summed over seeds, so each seed's weights get exactly its own gradient.
    scale = float(num_seeds)
    for step in range(cfg.steps):
        if selfcond and step % cfg.recluster_every == 0:
            with torch.no_grad():
                features = discriminator.features(train)  # [S, T, F]
            for s in range(num_seeds):
                clusterings[s] = recluster(
                    features[s, : cfg.cluster_points], k, previous=clusterings[s], generator=gens[s], max_iter=50
                )
                labels[s] = assign(features[s], clusterings[s].means)  # type: ignore[union-attr]
                frequencies[s] = cluster_frequencies(labels[s], k)

        index = torch.stack([torch.randint(cfg.train_points, (cfg.batch_size,), generator=gen) for gen in gens])
        real = torch.gather(train, 1, index[..., None].expand(-1, -1, 2))  # [S, B, 2]
        noise = torch.stack([torch.randn(cfg.batch_size, cfg.z_dim, generator=gen) for gen in gens])  # [S, B, Z]
        if selfcond:
            real_ids = torch.gather(labels, 1, index)  # [S, B]
            fake_ids = torch.stack(
                [torch.multinomial(frequencies[s], cfg.batch_size, replacement=True, generator=gens[s])
                 for s in range(num_seeds)]
            )  # [S, B]
        else:
            real_ids = fake_ids = torch.zeros(num_seeds, cfg.batch_size, dtype=torch.int64)
        fake = generator(generator_input(noise, fake_ids))  # [S, B, 2]; reused by the generator step below

        # Discriminator step.
        both = discriminator(torch.cat([real, fake.detach()], dim=1))  # [S, 2B, out]: one pass, one power iteration
        real_out = both[:, : cfg.batch_size].flatten(0, 1)  # [S*B, out]
        fake_out = both[:, cfg.batch_size :].flatten(0, 1)
        real_anchor = origin if anchors is None else anchors[real_ids.flatten()]  # [L] or [S*B, L]
        fake_anchor = origin if anchors is None else anchors[fake_ids.flatten()]
        d_loss = discriminator_loss(
            variant, real_out, fake_out, real_anchor=real_anchor, fake_anchor=fake_anchor, margin=cfg.margin
        )
        opt_d.zero_grad(set_to_none=True)
        (scale * d_loss).backward()
        opt_d.step()

        # Generator step, against the updated discriminator.
        g_loss = generator_loss(variant, discriminator(fake).flatten(0, 1), fake_anchor=fake_anchor)
        opt_g.zero_grad(set_to_none=True)
        (scale * g_loss).backward(inputs=list(generator.parameters()))
        opt_g.step()
        for schedule in schedules:
            schedule.step()
        with torch.no_grad():
            if cfg.ema > 0:
                # Warm-up: early on the average would still hold the random initial weights.
                beta = min(cfg.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1 - beta)
        if progress_fn is not None:
            progress_fn(variant, step + 1, cfg.steps)

    evaluated = ema if cfg.ema > 0 else generator
    with torch.no_grad():
        noise = torch.stack([torch.randn(cfg.eval_samples, cfg.z_dim, generator=gen) for gen in gens])
        if selfcond:
            ids = torch.stack(
                [torch.multinomial(frequencies[s], cfg.eval_samples, replacement=True, generator=gens[s])
                 for s in range(num_seeds)]
            )
        else:
            ids = torch.zeros(num_seeds, cfg.eval_samples, dtype=torch.int64)
        samples = evaluated(generator_input(noise, ids))  # [S, N, 2]
    seconds = (time.perf_counter() - start) / num_seeds
    results = []
    for s, seed in enumerate(seeds):
        results.append(
            SeedResult(
                variant=variant,
                seed=int(seed),
                metrics=mode_metrics(samples[s], mixture),
                cluster_purity=purity(labels[s], train_modes[s]) if selfcond else None,
                cluster_nmi=normalized_mutual_information(labels[s], train_modes[s]) if selfcond else None,
                seconds=seconds,
                lr_g=cfg.lr_g,
                lr_d=cfg.lr_d,
                margin=None if variant == "scalar" else cfg.margin,
            )
        )
    return (results, samples) if return_samples else results


# ---------------------------------------------------------------------------------------------
# Many seeds, a table.


@dataclass(frozen=True)
class RowSummary:
    """One variant over seeds: means, sample standard deviations (0 for one seed), worst case for modes."""

    variant: str
    seeds: int
    modes_mean: float
    modes_sd: float
    modes_min: int
    all_modes: int  # seeds that hit every mode
    high_quality_mean: float
    high_quality_sd: float
    reverse_kl_mean: float
    reverse_kl_sd: float
    purity_mean: float | None
    nmi_mean: float | None
    seconds: float  # wall clock for all seeds of this variant
    lr_g: float
    lr_d: float
    margin: float | None


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[SeedResult], *, num_modes: int) -> list[RowSummary]:
    rows = []
    for variant in [v for v in VARIANTS if any(r.variant == v for r in results)]:
        mine = [r for r in results if r.variant == variant]
        modes = [r.metrics.modes for r in mine]
        purities = [r.cluster_purity for r in mine if r.cluster_purity is not None]
        nmis = [r.cluster_nmi for r in mine if r.cluster_nmi is not None]
        rows.append(
            RowSummary(
                variant=variant,
                seeds=len(mine),
                modes_mean=_mean_sd(modes)[0],
                modes_sd=_mean_sd(modes)[1],
                modes_min=min(modes),
                all_modes=sum(m == num_modes for m in modes),
                high_quality_mean=_mean_sd([r.metrics.high_quality for r in mine])[0],
                high_quality_sd=_mean_sd([r.metrics.high_quality for r in mine])[1],
                reverse_kl_mean=_mean_sd([r.metrics.reverse_kl for r in mine])[0],
                reverse_kl_sd=_mean_sd([r.metrics.reverse_kl for r in mine])[1],
                purity_mean=statistics.fmean(purities) if purities else None,
                nmi_mean=statistics.fmean(nmis) if nmis else None,
                seconds=sum(r.seconds for r in mine),
                lr_g=mine[0].lr_g,
                lr_d=mine[0].lr_d,
                margin=mine[0].margin,
            )
        )
    return rows


def benchmark_configs(dataset: str, variants: Sequence[str] = VARIANTS, **overrides: object) -> dict[str, ModesConfig]:
    """Each row's settings for one dataset; overrides apply to every row. All are checked before anything trains."""
    return {variant: default_config(dataset, variant, **overrides) for variant in variants}


def run_benchmark(
    configs: dict[str, ModesConfig], *, seeds: Sequence[int], progress_fn: ProgressFn | None = None
) -> list[SeedResult]:
    """Every row (variant -> its config) on every seed."""
    results: list[SeedResult] = []
    for variant, config in configs.items():
        results.extend(train_variant(config, variant, seeds=seeds, progress_fn=progress_fn))  # type: ignore[arg-type]
    return results


def format_table(rows: Sequence[RowSummary], *, num_modes: int) -> str:
    """A Markdown table: mean ± sd over seeds (min for modes), clustering scores for the self-conditioned row."""
    lines = [
        f"| discriminator | lr, margin | modes (of {num_modes}) | min | all modes | high quality | reverse KL | "
        "cluster purity / NMI | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        clusters = f"{row.purity_mean:.3f} / {row.nmi_mean:.3f}" if row.purity_mean is not None else "-"
        lr = f"{row.lr_g:g}" if row.lr_g == row.lr_d else f"{row.lr_g:g} / {row.lr_d:g}"
        lr += f", m = {row.margin:g}" if row.margin is not None else ""
        lines.append(
            f"| {VARIANT_TITLES[row.variant]} | {lr} | {row.modes_mean:.2f} ± {row.modes_sd:.2f} | {row.modes_min} | "
            f"{row.all_modes}/{row.seeds} | {100 * row.high_quality_mean:.1f}% ± {100 * row.high_quality_sd:.1f} | "
            f"{row.reverse_kl_mean:.4f} ± {row.reverse_kl_sd:.4f} | {clusters} | {row.seconds:.0f} s |"
        )
    return "\n".join(lines)
