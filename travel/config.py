"""Frozen configuration dataclasses: the architecture (saved with the weights) kept apart from run settings.

Their defaults are the product's defaults: `FitConfig(data=DataConfig(source=A, target=B))` trains what
`travel fit --src A --dst B` trains. A field whose default is None is resolved from the discriminator family or the
training crop by `resolve`, the one function the command line, the Python API and `travel bench speed` all call;
a resolved config (what run folders and weights hold) has no None left. How older saved configs read is
travel.compat's business, not these classes'.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from travel.errors import ConfigError

SCHEMA_VERSION = 2  # bump when the meaning of a saved config or weight name changes; travel.compat reads older ones

# Width at full resolution of the default model. 16 rather than 32: at the same steps 32 channels was no
# better on the glyph benchmark (docs/BENCHMARKS.md, "Default width") and trains half as fast on a CPU.
DEFAULT_CHANNELS = 16
# What G's 3x3 convolutions see beyond the border. Zero padding tells every layer where the border is, and the
# emoji models used that to paint a 1-2 px frame; replicate padding hides the border. At the same budget it removed
# the frame (emoji L1 0.1765 -> 0.1415) and was no worse on glyphs, for about 10% of the training speed at 256 px on
# a CPU (docs/BENCHMARKS.md, "Border frames").
DEFAULT_PADDING = "replicate"
MIXING = ("none", "ccm", "ccm+csm")  # ProjectedConfig.mixing
FAMILIES = ("projected", "scratch")  # discriminator families (travel.nets.discriminators holds their networks)


# ---------------------------------------------------------------------------------------------
# Architecture: what a checkpoint must carry to rebuild its networks.


@dataclass(frozen=True)
class GeneratorConfig:
    """U-Net with self-attention at the low resolutions."""

    channels: int = 3  # image channels in and out
    base_channels: int = DEFAULT_CHANNELS  # width at full resolution; doubles at each level
    max_channels: int = 256  # width cap for the deep levels
    depth: int = 4  # number of stride-2 downsamplings; inputs are padded to a multiple of 2**depth
    # Levels (1 = half resolution) with self-attention. None: the levels at most 32 px on a side at the training crop.
    attention_levels: tuple[int, ...] | None = None
    norm_groups: int = 8  # group normalisation groups (capped by the channel count)
    num_styles: int = 0  # > 0: decoder norms are conditioned on a style (cluster) id; resolve sets the cluster count
    residual: bool = True  # output tanh(atanh(source) + head): starts as the identity, learns the change
    padding: Literal["zeros", "replicate"] = DEFAULT_PADDING  # type: ignore[assignment]  # beyond the border
    # U-Net skips come from levels skip_from..depth-1 only: 0 keeps every skip; 1 drops the full-resolution one, so
    # the decoder redraws strokes from half-resolution features (the residual output still adds the input).
    skip_from: int = 0
    # A learned displacement field, refined coarse to fine at every decoder level, moves each skip's features and
    # the residual's input before they are used: G can move strokes instead of only repainting them in place. The
    # field is in full-resolution pixels (the same displacement at any image size) and starts at zero.
    warp: bool = True

    def __post_init__(self) -> None:
        where = "GeneratorConfig"
        _check(self.channels in (1, 3), f"image channels must be 1 or 3, got {self.channels}", f"{where}.channels")
        _check(self.base_channels >= 4, f"must be >= 4, got {self.base_channels}", f"{where}.base_channels")
        _check(self.max_channels >= self.base_channels, "must be >= base_channels", f"{where}.max_channels")
        _check(1 <= self.depth <= 8, f"must be in 1..8, got {self.depth}", f"{where}.depth")
        _check(
            self.attention_levels is None or all(1 <= lvl <= self.depth for lvl in self.attention_levels),
            f"{self.attention_levels} must lie in 1..depth={self.depth}", f"{where}.attention_levels",
        )
        _check(self.norm_groups >= 1, "must be >= 1", f"{where}.norm_groups")
        _check(self.num_styles >= 0, "must be >= 0", f"{where}.num_styles")
        _check(self.padding in ("zeros", "replicate"), f"must be zeros or replicate, got {self.padding!r}", f"{where}.padding")
        _check(0 <= self.skip_from <= self.depth, f"must be in 0..depth={self.depth}, got {self.skip_from}", f"{where}.skip_from")

    def width(self, level: int) -> int:
        """Channels at `level` (0 = full resolution)."""
        return min(self.base_channels * 2**level, self.max_channels)

    @property
    def multiple(self) -> int:
        """Input sides are padded up to a multiple of this."""
        return 2**self.depth


@dataclass(frozen=True)
class ScratchConfig:
    """The spectrally normalised pixel-space encoder: the scratch family's discriminator, and the projected family's
    pixel branch (ProjectedConfig.pixel_weight)."""

    base_channels: int = DEFAULT_CHANNELS
    max_channels: int = 256
    depth: int = 4  # stride-2 downsamplings before global pooling
    # Level with a self-attention block (0 = none). None: the first level at most 32 px on a side at the training crop.
    attention_level: int | None = None

    def __post_init__(self) -> None:
        where = "ScratchConfig"
        _check(self.base_channels >= 4, f"must be >= 4, got {self.base_channels}", f"{where}.base_channels")
        _check(self.max_channels >= self.base_channels, "must be >= base_channels", f"{where}.max_channels")
        _check(1 <= self.depth <= 8, f"must be in 1..8, got {self.depth}", f"{where}.depth")
        _check(self.attention_level is None or 0 <= self.attention_level <= self.depth,
               f"must lie in 0..depth={self.depth}, got {self.attention_level}", f"{where}.attention_level")

    def width(self, level: int) -> int:
        return min(self.base_channels * 2**level, self.max_channels)


@dataclass(frozen=True)
class ProjectedConfig:
    """The projected family: frozen ImageNet EfficientNet-Lite0 features, trainable SN heads at 4 scales emitting a
    vector per patch (docs/METHOD.md, "Projected discriminator")."""

    # The side images are resized to before the backbone. None: at least 128 (64 px reads far better upsampled), else
    # the crop rounded up to the backbone's stride of 32.
    resolution: int | None = None
    head_channels: int = 64  # width of each scale's 3x3 head convolution
    # Projected GAN's fixed random mixing of the backbone's features before the heads: "ccm" mixes channels (a random
    # 1x1 conv per scale), "ccm+csm" also mixes scales (deeper maps, upsampled, added to shallower ones).
    mixing: Literal["none", "ccm", "ccm+csm"] = "none"  # type: ignore[assignment]
    # Weight of a pixel-space branch beside the frozen-feature heads (0 = none): the scratch encoder (ScratchConfig),
    # trained from scratch on the images as they are, its one vector per image judged with the same anchor loss as
    # one more "patch" of this weight.
    pixel_weight: float = 0.0

    def __post_init__(self) -> None:
        where = "ProjectedConfig"
        _check(self.resolution is None or (self.resolution >= 32 and self.resolution % 32 == 0),
               f"must be a multiple of 32 (the backbone's stride), got {self.resolution}", f"{where}.resolution")
        _check(self.head_channels >= 1, f"must be >= 1, got {self.head_channels}", f"{where}.head_channels")
        _check(self.mixing in MIXING, f"must be one of {', '.join(MIXING)}, got {self.mixing!r}", f"{where}.mixing")
        _check(self.pixel_weight >= 0, f"must be >= 0, got {self.pixel_weight}", f"{where}.pixel_weight")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Spectrally normalised Siamese discriminator emitting vectors of length vec_len, of one family: `projected`
    (ProjectedConfig) or `scratch` (ScratchConfig). Each family's own settings live in its config."""

    family: Literal["projected", "scratch"] = "projected"  # type: ignore[assignment]
    channels: int = 3
    vec_len: int | None = None  # length of each emitted vector (L in docs/METHOD.md). None: the family's
    rotation_head: bool | None = None  # 4-way rotation classifier on the pooled features (SS-GAN). None: with the rotation loss
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    projected: ProjectedConfig = field(default_factory=ProjectedConfig)

    def __post_init__(self) -> None:
        where = "DiscriminatorConfig"
        _check(self.family in FAMILIES, f"must be one of {', '.join(FAMILIES)}, got {self.family!r}", f"{where}.family")
        _check(self.channels in (1, 3), f"image channels must be 1 or 3, got {self.channels}", f"{where}.channels")
        _check(self.vec_len is None or self.vec_len >= 1, f"must be >= 1, got {self.vec_len}", f"{where}.vec_len")
        if self.family != "projected":  # the projected settings a user can set, given to another family
            _check(self.projected.mixing == "none", "mixes the backbone's features: it needs the projected family",
                   "ProjectedConfig.mixing")
            _check(self.projected.pixel_weight == 0,
                   "is a pixel branch beside the backbone: it needs the projected family (the scratch one is pixel-space already)",
                   "ProjectedConfig.pixel_weight")


@dataclass(frozen=True)
class ModelConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    # S, whose vectors the TraVeL loss compares: D itself ("shared") or its own network. None: the family's.
    siamese: Literal["shared", "separate"] | None = None

    def __post_init__(self) -> None:
        _check(self.siamese in (None, "shared", "separate"), f"must be shared or separate, got {self.siamese!r}", "ModelConfig.siamese")
        _check(
            self.generator.channels == self.discriminator.channels,
            "generator and discriminator must agree on image channels", "DiscriminatorConfig.channels",
        )


# ---------------------------------------------------------------------------------------------
# Run settings: how one training run goes. Saved in the run folder, not needed to translate.


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (docs/METHOD.md, "Losses")."""

    adv: float = 1.0  # lambda_adv: anchor realism loss
    travel: float | None = None  # lambda_travel: cosine transformation-vector loss. None: the family's
    dist: float = 1.0  # lambda_dist: squared-distance part of the TraVeL loss
    margin: float = 1.0  # lambda_margin: keeps S from collapsing
    anchor_margin: float = 1.0  # m: translations are pushed at least this far from the anchor
    delta: float = 1.0  # margin-loss distance between distinct source embeddings
    r1_gamma: float = 0.0  # R1 gradient penalty on real targets (0 = off)
    rotation: bool = False  # the self-supervised rotation loss (SS-GAN); D is then built with a rotation head
    rotation_d: float = 1.0  # SS-GAN beta: D's rotation loss on real targets (with rotation)
    rotation_g: float = 0.2  # SS-GAN alpha: G's rotation loss on translations (with rotation)
    rotation_g_decay: bool = True  # decay alpha linearly to 0 over training, so G's optimum stays the data's

    @property
    def rotating(self) -> bool:
        """Whether the rotation losses run: switched on, with a positive D weight (rotation_d 0 turns both off)."""
        return self.rotation and self.rotation_d > 0

    def __post_init__(self) -> None:
        for name in ("adv", "travel", "dist", "margin", "anchor_margin", "delta", "r1_gamma", "rotation_d", "rotation_g"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"loss weight must be >= 0, got {value}", f"LossConfig.{name}")


@dataclass(frozen=True)
class ClusterConfig:
    """Self-conditioning (docs/METHOD.md, "Self-conditioning"): cluster real targets in D's feature space, condition on the cluster."""

    clusters: int = 0  # K; 0 = off. The generator is built with num_styles = K
    recluster_every: int = 1000  # steps between k-means runs (warm-started, ids kept by Hungarian matching)
    subset: int = 1000  # at most this many real targets (a fixed, seeded subset) are clustered; the rest are assigned
    anchor_scale: float = 1.0  # anchor c_k = anchor_scale * sqrt(L) * e_k, so anchors lie 2 * scale^2 apart in d
    # What is clustered: "discriminator" = D's pooled trunk features (trained, so reclustered as D learns);
    # "backbone" = channel means and stds of the frozen ImageNet backbone's 4 scales, standardised (style
    # statistics; frozen, so clustered once). Either discriminator family; "backbone" needs the backbone wheel.
    features: Literal["discriminator", "backbone"] = "discriminator"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        where = "ClusterConfig"
        _check(self.clusters >= 0 and self.clusters != 1, f"must be 0 (off) or at least 2, got {self.clusters}", f"{where}.clusters")
        _check(self.recluster_every >= 1, "must be >= 1", f"{where}.recluster_every")
        _check(self.subset >= 2, "the clustering subset must hold at least 2 images", f"{where}.subset")
        _check(self.features in ("discriminator", "backbone"),
               f"must be discriminator or backbone, got {self.features!r}", f"{where}.features")
        _check(self.anchor_scale > 0, "must be > 0", f"{where}.anchor_scale")


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # folder of domain A images
    target: str = ""  # folder of domain B images
    load_size: int | None = None  # shorter side is resized to this before cropping. None: about 1.12 x the crop
    crop_size: int = 128  # training crop (square)
    flip: bool = True  # random horizontal flips
    augment: bool = True  # differentiable augmentation of everything the adversarial loss sees
    # Colour jitter (brightness, contrast, saturation) among those augmentations. Off, D sees every colour as G drew
    # it, so a drift of tone or a colour cast costs G realism; where colour is part of the style, measure both.
    augment_colour: bool = True
    workers: int = 0  # data-loading worker processes
    cache: bool = False  # keep decoded, resized images in memory

    def __post_init__(self) -> None:
        _check(self.crop_size >= 8, f"crop size must be >= 8, got {self.crop_size}", "DataConfig.crop_size")
        _check(
            self.load_size is None or self.load_size >= self.crop_size,
            f"load size ({self.load_size}) must be >= crop size ({self.crop_size})", "DataConfig.load_size",
        )
        _check(self.workers >= 0, f"must be >= 0, got {self.workers}", "DataConfig.workers")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # generator updates
    batch_size: int = 4  # per process; the TraVeL loss needs >= 2 (pairs within the batch)
    lr_g: float | None = None  # TTUR: generator learning rate. None: the family's
    lr_d: float = 4e-4  # TTUR: discriminator learning rate
    beta1: float = 0.0  # Adam betas (0.0, 0.9) as in SAGAN / TTUR
    beta2: float = 0.9
    d_steps: int = 1  # discriminator updates per generator update
    ema_beta: float = 0.999  # EMA of generator weights (warmed up over the first steps)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA if supported, else fp32
    compile: bool = False  # torch.compile the trained networks' forward (slow first steps while it compiles)
    channels_last: bool = False  # networks and inputs in NHWC, the layout oneDNN (CPU) and tensor-core convolutions use
    log_every: int = 10  # steps between metrics.jsonl lines
    sample_every: int = 500  # steps between sample grids
    save_every: int = 1000  # steps between resume-state and weight saves
    sample_count: int = 8  # source images in each sample grid

    def __post_init__(self) -> None:
        where = "TrainConfig"
        _check(self.steps >= 1, f"must be >= 1, got {self.steps}", f"{where}.steps")
        _check(self.batch_size >= 2, f"must be >= 2 (the TraVeL loss compares pairs), got {self.batch_size}", f"{where}.batch_size")
        _check(self.lr_g is None or self.lr_g > 0, f"must be > 0, got {self.lr_g}", f"{where}.lr_g")
        _check(self.lr_d > 0, f"must be > 0, got {self.lr_d}", f"{where}.lr_d")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must lie in [0, 1)", f"{where}.beta1")
        _check(self.d_steps >= 1, "must be >= 1", f"{where}.d_steps")
        _check(0 <= self.ema_beta < 1, "must lie in [0, 1)", f"{where}.ema_beta")
        _check(self.device in ("auto", "cpu", "cuda", "mps"), f"unknown device {self.device!r}", f"{where}.device")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), f"unknown precision {self.precision!r}", f"{where}.precision")
        for name in ("log_every", "sample_every", "save_every", "sample_count"):
            _check(getattr(self, name) >= 1, f"must be >= 1, got {getattr(self, name)}", f"{where}.{name}")


@dataclass(frozen=True)
class FitConfig:
    name: str = "travel"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name and "\\" not in self.name, f"bad run name {self.name!r}", "FitConfig.name")


# ---------------------------------------------------------------------------------------------
# Resolution: what depends on the discriminator family or the training crop.


@dataclass(frozen=True)
class FamilyDefaults:
    """What a discriminator family sets when the config leaves it None."""

    vec_len: int  # length of each emitted vector
    siamese: str  # where S lives
    travel: float  # lambda_travel
    lr_g: float  # generator learning rate (lr_d is 4e-4 for both)


FAMILY_DEFAULTS = {
    # The family's first prototype's (docs/METHOD.md, "Projected discriminator"): TraVeL at the scratch weight 10 pins
    # G to the identity on pretrained features, 0.1-0.2 kept the characters while the brush style arrived; one vector
    # of 32 per patch; S a separate linear head on the frozen features. docs/BENCHMARKS.md has the measured climb.
    "projected": FamilyDefaults(vec_len=32, siamese="separate", travel=0.2, lr_g=2e-4),
    "scratch": FamilyDefaults(vec_len=128, siamese="shared", travel=10.0, lr_g=1e-4),
}


def resolve(config: FitConfig) -> FitConfig:
    """`config` with every None filled from its discriminator family (FAMILY_DEFAULTS) and its training crop, and the
    settings that must agree checked together. Idempotent; what `travel.fit` trains and a run folder saves."""
    model, data, crop = config.model, config.data, config.data.crop_size
    family = FAMILY_DEFAULTS[model.discriminator.family]
    k = config.clusters.clusters
    g = model.generator
    _check(g.num_styles in (0, k), f"is {g.num_styles}, but self-conditioning has {k} clusters (it sets num_styles itself)",
           "GeneratorConfig.num_styles")
    g = replace(g, num_styles=k, attention_levels=g.attention_levels if g.attention_levels is not None
                else attention_levels_for(crop, g.depth))
    d = model.discriminator
    s, p = d.scratch, d.projected
    d = replace(
        d, vec_len=d.vec_len if d.vec_len is not None else family.vec_len,
        rotation_head=d.rotation_head if d.rotation_head is not None else config.loss.rotation,
        scratch=replace(s, attention_level=s.attention_level if s.attention_level is not None
                        else discriminator_attention_level_for(crop, s.depth)),
        projected=replace(p, resolution=p.resolution if p.resolution is not None else projected_resolution_for(crop)),
    )
    loss = config.loss
    _check(not loss.rotation or bool(d.rotation_head), "the rotation loss needs a discriminator with a rotation head",
           "DiscriminatorConfig.rotation_head")
    _check(k <= d.vec_len, f"{k} clusters need vec_len >= {k} (one anchor axis each), got {d.vec_len}", "ClusterConfig.clusters")
    return replace(
        config,
        model=replace(model, generator=g, discriminator=d, siamese=model.siamese or family.siamese),  # type: ignore[arg-type]
        loss=replace(loss, travel=loss.travel if loss.travel is not None else family.travel),
        data=replace(data, load_size=data.load_size if data.load_size is not None else max(crop, round(crop * 1.12))),
        train=replace(config.train, lr_g=config.train.lr_g if config.train.lr_g is not None else family.lr_g),
    )


def attention_levels_for(crop_size: int, depth: int, max_resolution: int = 32) -> tuple[int, ...]:
    """Levels whose feature maps are at most `max_resolution` pixels on a side at the training crop."""
    return tuple(lvl for lvl in range(1, depth + 1) if crop_size // 2**lvl <= max_resolution)


def discriminator_attention_level_for(crop_size: int, depth: int, max_resolution: int = 32) -> int:
    """The first (largest) discriminator level at most `max_resolution` on a side at the training crop.

    Attention cost grows with the square of the positions: at 256 px a block at level 2 (64x64) was 4.2 of
    the discriminator's 8.9 GFLOP per image; at level 3 (32x32) the whole discriminator costs 4.6.
    """
    return next((lvl for lvl in range(1, depth + 1) if crop_size // 2**lvl <= max_resolution), depth)


def projected_resolution_for(size: int) -> int:
    """The side images are resized to before the backbone: at least 128 (64 px reads far better upsampled), else
    the crop rounded up to the backbone's stride of 32."""
    return max(128, -(-size // 32) * 32)


# ---------------------------------------------------------------------------------------------
# JSON round trip.


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild a (nested) config dataclass from a dict of today's schema; unknown keys are an error, missing keys take
    today's defaults (travel.compat turns an older file into today's schema first)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    kwargs = {key: _coerce(hints[key], value, f"{cls.__name__}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {type(value).__name__}", where)
        return tuple(_coerce(typing.get_args(hint)[0], v, where) for v in value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{value!r} is not one of {typing.get_args(hint)}", where)
        return value
    if origin in (typing.Union, types.UnionType):  # X | None: None, or an X
        if value is None and type(None) in typing.get_args(hint):
            return None
        return _coerce(next(arg for arg in typing.get_args(hint) if arg is not type(None)), value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true/false, got {value!r}", where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", where)
        return value
    return value


def _check(ok: bool, message: str, setting: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, setting)
