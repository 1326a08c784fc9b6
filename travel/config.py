"""Frozen configuration dataclasses: the architecture (saved with the weights) kept apart from run settings."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from travel.errors import ConfigError

SCHEMA_VERSION = 1  # bump when the meaning of a saved config or weight name changes

# Width at full resolution of the default model. 16 rather than 32: at the same steps 32 channels was no
# better on the glyph benchmark (docs/BENCHMARKS.md, "Default width") and trains half as fast on a CPU.
# Saved configs always carry their width, so this changes new runs only.
DEFAULT_CHANNELS = 16
# What G's 3x3 convolutions see beyond the border in new runs. Zero padding tells every layer where the border is,
# and the emoji models used that to paint a 1-2 px frame; replicate padding hides the border. At the same budget
# it removed the frame (emoji L1 0.1765 -> 0.1415) and was no worse on glyphs, for about 10% of the training
# speed at 256 px on a CPU (docs/BENCHMARKS.md, "Border frames").
# Saved configs without the key were trained with zeros and load so (GeneratorConfig.padding's "absent").
DEFAULT_PADDING = "replicate"
MIXING = ("none", "ccm", "ccm+csm")  # DiscriminatorConfig.mixing: the projected family's feature mixing


# ---------------------------------------------------------------------------------------------
# Architecture: what a checkpoint must carry to rebuild its networks.


@dataclass(frozen=True)
class GeneratorConfig:
    """U-Net with self-attention at the low resolutions."""

    channels: int = 3  # image channels in and out
    base_channels: int = DEFAULT_CHANNELS  # width at full resolution; doubles at each level
    max_channels: int = 256  # width cap for the deep levels
    depth: int = 4  # number of stride-2 downsamplings; inputs are padded to a multiple of 2**depth
    attention_levels: tuple[int, ...] = (3, 4)  # levels (1 = half resolution) with self-attention
    norm_groups: int = 8  # group normalisation groups (capped by the channel count)
    num_styles: int = 0  # > 0: decoder norms are conditioned on a style (cluster) id
    residual: bool = True  # output tanh(atanh(source) + head): starts as the identity, learns the change
    # What the 3x3 convolutions see beyond the border (DEFAULT_PADDING above). A saved config without this key
    # predates the setting, was trained with zeros, and loads with zeros.
    padding: Literal["zeros", "replicate"] = field(default=DEFAULT_PADDING, metadata={"absent": "zeros"})  # type: ignore[assignment]
    # U-Net skips come from levels skip_from..depth-1 only: 0 keeps every skip; 1 drops the full-resolution one, so
    # the decoder redraws strokes from half-resolution features (the residual output still adds the input).
    skip_from: int = 0
    # A learned displacement field, refined coarse to fine at every decoder level, moves each skip's features and
    # the residual's input before they are used: G can move strokes instead of only repainting them in place. The
    # field is in full-resolution pixels (the same displacement at any image size) and starts at zero.
    warp: bool = False

    def __post_init__(self) -> None:
        _check(self.channels in (1, 3), f"generator channels must be 1 or 3, got {self.channels}")
        _check(self.base_channels >= 4, f"generator base_channels must be >= 4, got {self.base_channels}")
        _check(self.max_channels >= self.base_channels, "generator max_channels must be >= base_channels")
        _check(1 <= self.depth <= 8, f"generator depth must be in 1..8, got {self.depth}")
        _check(
            all(1 <= lvl <= self.depth for lvl in self.attention_levels),
            f"attention_levels {self.attention_levels} must lie in 1..depth={self.depth}",
        )
        _check(self.norm_groups >= 1, "norm_groups must be >= 1")
        _check(self.num_styles >= 0, "num_styles must be >= 0")
        _check(self.padding in ("zeros", "replicate"), f"generator padding must be zeros or replicate, got {self.padding!r}")
        _check(0 <= self.skip_from <= self.depth, f"generator skip_from must be in 0..depth={self.depth}, got {self.skip_from}")

    def width(self, level: int) -> int:
        """Channels at `level` (0 = full resolution)."""
        return min(self.base_channels * 2**level, self.max_channels)

    @property
    def multiple(self) -> int:
        """Input sides are padded up to a multiple of this."""
        return 2**self.depth


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Spectrally normalised Siamese encoder emitting a vector of length vec_len (one per patch and scale when projected).

    Two families: `scratch` (travel.models.Discriminator: a small SN encoder trained from scratch, one vector per
    image) and `projected` (travel.projected: frozen ImageNet EfficientNet-Lite0 features, trainable SN heads at 4
    scales emitting a vector per patch). base_channels, max_channels, depth and attention_level shape the scratch
    encoder only; resolution and head_channels the projected heads only.
    """

    # A saved config without this key predates the projected family and was a scratch discriminator.
    family: Literal["scratch", "projected"] = field(default="scratch", metadata={"absent": "scratch"})  # type: ignore[assignment]
    channels: int = 3
    base_channels: int = DEFAULT_CHANNELS
    max_channels: int = 256
    depth: int = 4  # stride-2 downsamplings before global pooling
    attention_level: int = 2  # level with a self-attention block (0 = none)
    vec_len: int = 128  # length of the emitted vector (L in docs/METHOD.md)
    rotation_head: bool = False  # 4-way rotation classifier on the pooled features (SS-GAN)
    resolution: int = 128  # projected: images are resized to this side before the backbone (64 px reads far better at 128)
    head_channels: int = 64  # projected: width of each scale's 3x3 head convolution
    # projected: Projected GAN's fixed random mixing of the backbone's features before the heads: "ccm" mixes channels
    # (a random 1x1 conv per scale), "ccm+csm" also mixes scales (deeper maps, upsampled, added to shallower ones).
    mixing: Literal["none", "ccm", "ccm+csm"] = field(default="none", metadata={"absent": "none"})  # type: ignore[assignment]
    # projected: weight of a pixel-space branch beside the frozen-feature heads (0 = none): the scratch encoder
    # (shaped by base_channels, max_channels, depth, attention_level), trained from scratch on the images as they
    # are, its one vector per image judged with the same anchor loss as one more "patch" of this weight.
    pixel_weight: float = field(default=0.0, metadata={"absent": 0.0})

    def __post_init__(self) -> None:
        _check(self.family in ("scratch", "projected"), f"discriminator family must be scratch or projected, got {self.family!r}")
        _check(self.resolution >= 32 and self.resolution % 32 == 0,
               f"projected resolution must be a multiple of 32 (the backbone's stride), got {self.resolution}")
        _check(self.head_channels >= 1, "head_channels must be >= 1")
        _check(self.mixing in MIXING, f"mixing must be one of {', '.join(MIXING)}, got {self.mixing!r}")
        _check(self.pixel_weight >= 0, f"pixel_weight must be >= 0, got {self.pixel_weight}")
        _check(self.pixel_weight == 0 or self.family == "projected",
               "a pixel-space branch (pixel_weight) needs the projected family (the scratch one is pixel-space already)")
        _check(self.channels in (1, 3), f"discriminator channels must be 1 or 3, got {self.channels}")
        _check(self.base_channels >= 4, "discriminator base_channels must be >= 4")
        _check(self.max_channels >= self.base_channels, "discriminator max_channels must be >= base_channels")
        _check(1 <= self.depth <= 8, f"discriminator depth must be in 1..8, got {self.depth}")
        _check(0 <= self.attention_level <= self.depth, "attention_level must lie in 0..depth")
        _check(self.vec_len >= 1, f"vec_len must be >= 1, got {self.vec_len}")

    def width(self, level: int) -> int:
        return min(self.base_channels * 2**level, self.max_channels)


@dataclass(frozen=True)
class ModelConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    siamese: Literal["shared", "separate"] = "shared"  # S is D itself, or its own network

    def __post_init__(self) -> None:
        _check(self.siamese in ("shared", "separate"), f"siamese must be 'shared' or 'separate', got {self.siamese!r}")
        _check(
            self.generator.channels == self.discriminator.channels,
            "generator and discriminator must agree on image channels",
        )


# ---------------------------------------------------------------------------------------------
# Run settings: how one training run goes. Saved in the run folder, not needed to translate.


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (docs/METHOD.md, "Losses")."""

    adv: float = 1.0  # lambda_adv: anchor realism loss
    travel: float = 10.0  # lambda_travel: cosine transformation-vector loss
    dist: float = 1.0  # lambda_dist: squared-distance part of the TraVeL loss
    margin: float = 1.0  # lambda_margin: keeps S from collapsing
    anchor_margin: float = 1.0  # m: translations are pushed at least this far from the anchor
    delta: float = 1.0  # margin-loss distance between distinct source embeddings
    r1_gamma: float = 0.0  # R1 gradient penalty on real targets (0 = off)
    rotation_d: float = 0.0  # SS-GAN beta: D's rotation loss on real targets (0 = off; needs a rotation head)
    rotation_g: float = 0.2  # SS-GAN alpha: G's rotation loss on translations (used when rotation_d > 0)
    rotation_g_decay: bool = True  # decay alpha linearly to 0 over training, so G's optimum stays the data's

    def __post_init__(self) -> None:
        for name in ("adv", "travel", "dist", "margin", "anchor_margin", "delta", "r1_gamma", "rotation_d", "rotation_g"):
            _check(getattr(self, name) >= 0, f"loss weight {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ClusterConfig:
    """Self-conditioning (docs/METHOD.md, "Self-conditioning"): cluster real targets in D's feature space, condition on the cluster."""

    clusters: int = 0  # K; 0 = off. The generator must be built with num_styles = K
    recluster_every: int = 1000  # steps between k-means runs (warm-started, ids kept by Hungarian matching)
    subset: int = 1000  # at most this many real targets (a fixed, seeded subset) are clustered; the rest are assigned
    anchor_scale: float = 1.0  # anchor c_k = anchor_scale * sqrt(L) * e_k, so anchors lie 2 * scale^2 apart in d
    # What is clustered: "discriminator" = D's pooled trunk features (trained, so reclustered as D learns);
    # "backbone" = channel means and stds of the frozen ImageNet backbone's 4 scales, standardised (style
    # statistics; frozen, so clustered once). Either discriminator family; "backbone" needs the backbone wheel.
    features: Literal["discriminator", "backbone"] = field(default="discriminator", metadata={"absent": "discriminator"})  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check(self.clusters >= 0, f"clusters must be >= 0, got {self.clusters}")
        _check(self.clusters != 1, "clusters must be 0 (off) or at least 2")
        _check(self.recluster_every >= 1, "recluster_every must be >= 1")
        _check(self.subset >= 2, "the clustering subset must hold at least 2 images")
        _check(self.features in ("discriminator", "backbone"),
               f"cluster features must be discriminator or backbone, got {self.features!r}")
        _check(self.anchor_scale > 0, "anchor_scale must be > 0")


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # folder of domain A images
    target: str = ""  # folder of domain B images
    load_size: int = 143  # shorter side is resized to this before cropping
    crop_size: int = 128  # training crop (square)
    flip: bool = True  # random horizontal flips
    augment: bool = True  # differentiable augmentation of everything the adversarial loss sees
    # Colour jitter (brightness, contrast, saturation) among those augmentations. Off, D sees every colour as G drew
    # it, so a drift of tone or a colour cast costs G realism; where colour is part of the style, measure both.
    augment_colour: bool = True
    workers: int = 0  # data-loading worker processes
    cache: bool = False  # keep decoded, resized images in memory

    def __post_init__(self) -> None:
        _check(self.crop_size >= 8, f"crop size must be >= 8, got {self.crop_size}")
        _check(
            self.load_size >= self.crop_size,
            f"load size ({self.load_size}) must be >= crop size ({self.crop_size})",
        )
        _check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # generator updates
    batch_size: int = 4  # per process; the TraVeL loss needs >= 2 (pairs within the batch)
    lr_g: float = 1e-4  # TTUR: generator learning rate
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
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 2, f"batch size must be >= 2 (the TraVeL loss compares pairs), got {self.batch_size}")
        _check(self.lr_g > 0 and self.lr_d > 0, "learning rates must be > 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must lie in [0, 1)")
        _check(self.d_steps >= 1, "d_steps must be >= 1")
        _check(0 <= self.ema_beta < 1, "ema_beta must lie in [0, 1)")
        _check(self.device in ("auto", "cpu", "cuda", "mps"), f"unknown device {self.device!r}")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), f"unknown precision {self.precision!r}")
        for name in ("log_every", "sample_every", "save_every", "sample_count"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class FitConfig:
    name: str = "travel"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name and "\\" not in self.name, f"bad run name {self.name!r}")
        _check(
            self.loss.rotation_d == 0 or self.model.discriminator.rotation_head,
            "the rotation loss needs a discriminator built with rotation_head=True",
        )
        k = self.clusters.clusters
        _check(
            self.model.generator.num_styles == k,
            f"self-conditioning with {k} clusters needs a generator with num_styles={k} (has {self.model.generator.num_styles})",
        )
        _check(k <= self.model.discriminator.vec_len, f"clusters ({k}) must not exceed vec_len ({self.model.discriminator.vec_len}): one anchor axis each")


# ---------------------------------------------------------------------------------------------
# JSON round trip.


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild a (nested) config dataclass from a dict; unknown keys are an error, missing keys take defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    kwargs = {key: _coerce(hints[key], value, f"{cls.__name__}.{key}") for key, value in data.items()}
    for f in dataclasses.fields(cls):  # a key older files lack, whose meaning then differs from today's default
        if f.name not in data and "absent" in f.metadata:
            kwargs[f.name] = f.metadata["absent"]
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
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(typing.get_args(hint)[0], v, where) for v in value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def attention_levels_for(crop_size: int, depth: int, max_resolution: int = 32) -> tuple[int, ...]:
    """Levels whose feature maps are at most `max_resolution` pixels on a side at the training crop."""
    return tuple(lvl for lvl in range(1, depth + 1) if crop_size // 2**lvl <= max_resolution)


def discriminator_attention_level_for(crop_size: int, depth: int, max_resolution: int = 32) -> int:
    """The first (largest) discriminator level at most `max_resolution` on a side at the training crop.

    Attention cost grows with the square of the positions: at 256 px a block at level 2 (64x64) was 4.2 of
    the discriminator's 8.9 GFLOP per image; at level 3 (32x32) the whole discriminator costs 4.6.
    """
    return next((lvl for lvl in range(1, depth + 1) if crop_size // 2**lvl <= max_resolution), depth)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class FamilyDefaults:
    """The settings `travel fit` uses for a discriminator family when the user does not give them."""

    vec_len: int  # length of each emitted vector
    siamese: str  # where S lives
    travel: float  # lambda_travel
    lr_g: float  # generator learning rate (lr_d stays 4e-4 for both)


FAMILY_DEFAULTS = {
    "scratch": FamilyDefaults(vec_len=128, siamese="shared", travel=10.0, lr_g=1e-4),
    # The family's first prototype's (docs/METHOD.md, "Projected discriminator"): TraVeL at today's weight 10 pins G to the identity on
    # pretrained features, 0.1-0.2 kept the characters while the brush style arrived; one vector of 32 per patch;
    # S a separate linear head on the frozen features. docs/BENCHMARKS.md has the measured climb from there.
    "projected": FamilyDefaults(vec_len=32, siamese="separate", travel=0.2, lr_g=2e-4),
}


def projected_resolution_for(size: int) -> int:
    """The side images are resized to before the backbone: at least 128 (64 px reads far better upsampled), else
    the crop rounded up to the backbone's stride of 32."""
    return max(128, -(-size // 32) * 32)


def model_config_for(
    *, size: int, channels: int = DEFAULT_CHANNELS, depth: int = 4, vec_len: int | None = None, rotation: bool = False,
    clusters: int = 0, siamese: str | None = None, padding: str = DEFAULT_PADDING, disc: str = "projected",
    head_channels: int = 64, mixing: str = "none", residual: bool = True, skip_from: int = 0, warp: bool = True,
    d_resolution: int | None = None, pixel_weight: float = 0.0,
) -> ModelConfig:
    """The architecture `travel fit` builds for a training crop of `size` from its command-line settings.
    vec_len and siamese default to the family's (FAMILY_DEFAULTS); d_resolution (the side the projected family
    resizes images to before its backbone) to projected_resolution_for(size)."""
    _check(disc in FAMILY_DEFAULTS, f"--disc must be one of {sorted(FAMILY_DEFAULTS)}, got {disc!r}")
    _check(mixing == "none" or disc == "projected", f"--mixing {mixing} needs --disc projected (it mixes the backbone's features)")
    _check(d_resolution is None or disc == "projected", "--d-resolution needs --disc projected (it sizes the backbone's input)")
    _check(pixel_weight == 0 or disc == "projected", "--pixel-weight needs --disc projected (the scratch discriminator is pixel-space already)")
    family = FAMILY_DEFAULTS[disc]
    generator = GeneratorConfig(
        base_channels=channels, depth=depth, attention_levels=attention_levels_for(size, depth), num_styles=clusters,
        padding=padding, residual=residual, skip_from=skip_from, warp=warp,
    )
    discriminator = DiscriminatorConfig(
        family=disc,  # type: ignore[arg-type]
        base_channels=channels, depth=depth, attention_level=discriminator_attention_level_for(size, depth),
        vec_len=vec_len if vec_len is not None else family.vec_len, rotation_head=rotation,
        resolution=d_resolution if d_resolution is not None else projected_resolution_for(size), head_channels=head_channels,
        mixing=mixing, pixel_weight=pixel_weight,  # type: ignore[arg-type]
    )
    return ModelConfig(generator=generator, discriminator=discriminator, siamese=siamese or family.siamese)  # type: ignore[arg-type]
