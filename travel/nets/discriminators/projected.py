"""The projected Siamese discriminator: frozen ImageNet features, trainable spectrally normalised heads at 4 scales.

The interface of travel.nets.discriminators.base, as the scratch family's, so the training loop builds one or the
other and never branches on which:
- forward(image) -> vectors [N, P, L]: one vector per patch, the patches of all 4 scales concatenated;
- patch_weights [P]: each patch's share of the per-image loss, so that every scale counts alike
  (1 / (4 * patches of its scale)); the scratch family has one vector per image and None here;
- features(image) -> [N, F]: pooled trunk features for the rotation head and for clustering;
- rotation_logits(features) -> [N, 4].

With cfg.projected.pixel_weight > 0 the projected discriminator also holds a pixel-space branch, the scratch encoder
(travel.nets.discriminators.scratch) on the images as they are, trained from scratch beside the heads: its one vector per
image is appended as one more patch of weight pixel_weight. The frozen features judge what ImageNet features see;
the branch is meant to judge what they miss (exact colours, edges, the drawing of small parts), which a two-sample
classifier trained on pixels reads. Measured on emoji it never learned to: its separation of translations from
targets stayed at chance (docs/BENCHMARKS.md, "A pixel-space branch"), so it is off by default.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from travel.config import DiscriminatorConfig, ProjectedConfig
from travel.errors import ConfigError
from travel.nets.backbone import FEATURE_CHANNELS, build_features
from travel.nets.discriminators.scratch import ScratchDiscriminator


class FrozenBackbone(nn.Module):
    """EfficientNet-Lite0's feature pyramid, frozen: gradients flow through it to the image, never to its weights.

    The network is kept out of the module tree (no parameters, no buffers, no state-dict keys): the optimizer,
    `requires_grad_(True)` on the discriminator, DDP's gradient and buffer sync and the resume state never see it,
    and its BN layers stay in eval mode with their ImageNet statistics. It is rebuilt from the hash-checked wheel
    whenever a discriminator is built; `.to()` and friends still move it (see _apply).
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        object.__setattr__(self, "net", build_features())  # not registered as a submodule, on purpose

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.net._apply(fn, recurse)  # device, dtype and memory-format moves reach the hidden network too
        return self

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights and BN statistics, by name (for checks that nothing changed them)."""
        return self.net.state_dict()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image: [N, C, H, W] in [-1, 1] (C = 1 or 3). Returns 4 maps [N, C_s, R / 2^(s+2), R / 2^(s+2)]."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        if image.shape[-2:] != (self.resolution, self.resolution):
            # Bilinear: the gradient reaches every source pixel when upsampling (64 px glyphs read far better at 128).
            image = F.interpolate(image, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.net(image)


MIXING_SEED = 20211101  # the random projections are a function of the config: same in every process and resume
MIXING_WIDTH = 64  # Projected GAN's cout: channel mixing widens the scales to 64, 128, 256, 512


def _random_conv1x1(generator: torch.Generator, c_in: int, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [c_out, c_in, 1, 1] and bias [c_out], drawn as torch.nn.Conv2d initialises them: U(-b, b), b = c_in^-1/2."""
    bound = c_in**-0.5
    weight = (torch.rand(c_out, c_in, 1, 1, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(c_out, generator=generator) * 2 - 1) * bound
    return weight, bias


class RandomMixing(nn.Module):
    """Projected GAN's fixed random projections of the feature pyramid (Sauer et al. 2021, its proj_type 2).

    Cross-channel mixing (ccm): a random 1x1 convolution per scale, widening to 64, 128, 256, 512 channels, so that
    no head can lean on a few of the backbone's channels. Cross-scale mixing (csm, on top of ccm): a top-down
    pathway in which each deeper map, bilinearly upsampled, is added to the next shallower one before a random 1x1
    convolution (to 64, 64, 128, 256 channels), so every scale's patches also see the deep, global features.
    Unlike Projected GAN the maps keep their scale's resolution (it also upsamples each by 2), so the heads' patch
    grid and cost stay as without mixing. Nothing here is trained: the weights are buffers drawn from a fixed seed,
    left out of the state dict (a function of the config, like the backbone).
    """

    def __init__(self, mode: str, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.mode = mode
        generator = torch.Generator().manual_seed(MIXING_SEED)
        widths = [MIXING_WIDTH * 2**s for s in range(len(in_channels))]
        for s, (c_in, c_out) in enumerate(zip(in_channels, widths)):
            weight, bias = _random_conv1x1(generator, c_in, c_out)
            self.register_buffer(f"ccm{s}_weight", weight, persistent=False)
            self.register_buffer(f"ccm{s}_bias", bias, persistent=False)
        if mode == "ccm+csm":
            outs = [widths[0]] + widths[:-1]  # each scale's output matches the next shallower scale's channels
            for s, (c_in, c_out) in enumerate(zip(widths, outs)):
                weight, bias = _random_conv1x1(generator, c_in, c_out)
                self.register_buffer(f"csm{s}_weight", weight, persistent=False)
                self.register_buffer(f"csm{s}_bias", bias, persistent=False)
            widths = outs
        self.out_channels = tuple(widths)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [self._conv(f"ccm{s}", f) for s, f in enumerate(features)]
        if self.mode != "ccm+csm":
            return mixed
        out: list[torch.Tensor] = [mixed[-1]] * len(mixed)
        deeper = None
        for s in reversed(range(len(mixed))):
            x = mixed[s]
            if deeper is not None:
                x = x + F.interpolate(deeper, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out[s] = deeper = self._conv(f"csm{s}", x)
        return out


class ProjectedDiscriminator(nn.Module):
    """Frozen backbone (optionally with fixed random mixing); at each of its 4 scales an SN 3x3 conv (head_channels)
    + LeakyReLU + SN 1x1 conv to vec_len."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.projected
        if p.resolution is None or cfg.vec_len is None:
            raise ConfigError("unresolved discriminator config: build it from travel.config.resolve(config)")
        self.backbone = FrozenBackbone(p.resolution)
        self.mixing = RandomMixing(p.mixing, FEATURE_CHANNELS) if p.mixing != "none" else None
        channels = self.mixing.out_channels if self.mixing is not None else FEATURE_CHANNELS
        hidden = p.head_channels
        self.hidden = nn.ModuleList(spectral_norm(nn.Conv2d(c, hidden, 3, padding=1)) for c in channels)
        self.heads = nn.ModuleList(spectral_norm(nn.Conv2d(hidden, cfg.vec_len, 1)) for _ in FEATURE_CHANNELS)
        self.feature_dim = hidden * len(FEATURE_CHANNELS)
        self.rotation = spectral_norm(nn.Linear(self.feature_dim, 4)) if cfg.rotation_head else None
        sides = [p.resolution // 2 ** (s + 2) for s in range(len(FEATURE_CHANNELS))]
        weights = torch.cat([torch.full((side * side,), 1.0 / (len(sides) * side * side)) for side in sides])
        self.pixel = None
        if p.pixel_weight > 0:
            # The scratch family as it is, without a rotation head of its own (features() stays the heads').
            self.pixel = ScratchDiscriminator(replace(cfg, family="scratch", rotation_head=False, projected=ProjectedConfig()))
            weights = torch.cat([weights, torch.tensor([p.pixel_weight])])
        self.register_buffer("patch_weights", weights, persistent=False)  # [P]; a function of the config, not state

    def _hidden(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(image)
        if self.mixing is not None:
            features = self.mixing(features)
        return [F.leaky_relu(conv(f), 0.2) for conv, f in zip(self.hidden, features)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [N, C, H, W] in [-1, 1]. Returns one vector per patch and scale: [N, P, vec_len]."""
        maps = [head(h) for head, h in zip(self.heads, self._hidden(image))]  # [N, L, h_s, w_s] each
        vectors = torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2)  # [N, P, L]
        if self.pixel is None:
            return vectors
        return torch.cat([vectors, self.pixel(image)[:, None, :]], dim=1)  # [N, P + 1, L]

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The heads' hidden activations, averaged over each scale and concatenated: [N, 4 * head_channels].

        Trainable (unlike the frozen backbone), so a rotation loss on them shapes what the heads see.
        """
        return torch.cat([h.mean(dim=(2, 3)) for h in self._hidden(image)], dim=1)

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            raise RuntimeError("this discriminator was built without a rotation head")
        return self.rotation(features)


class ProjectedEmbedding(nn.Module):
    """The separate Siamese embedding S of the projected family: an SN linear map of the frozen backbone's features,
    averaged over each scale and concatenated (24 + 40 + 112 + 320 = 496), to vec_len. Trained with G."""

    patch_weights = None  # one vector per image

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.projected.resolution is None or cfg.vec_len is None:
            raise ConfigError("unresolved discriminator config: build it from travel.config.resolve(config)")
        self.backbone = FrozenBackbone(cfg.projected.resolution)
        self.head = spectral_norm(nn.Linear(sum(FEATURE_CHANNELS), cfg.vec_len))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [N, C, H, W] in [-1, 1]. Returns [N, vec_len]."""
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in self.backbone(image)], dim=1)  # [N, 496]
        return self.head(pooled)


def build_discriminator(cfg: DiscriminatorConfig) -> ProjectedDiscriminator:
    return ProjectedDiscriminator(cfg)


def build_siamese(cfg: DiscriminatorConfig) -> ProjectedEmbedding:
    """The separate S of the projected family: an SN linear head on the frozen backbone's pooled features."""
    return ProjectedEmbedding(cfg)


@torch.no_grad()
def style_statistics(backbone: FrozenBackbone, images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std of each of the 4 frozen feature maps, concatenated: [N, 2 * 496].

    Style, not content: pooled statistics of early and middle features describe stroke weight, slant and texture
    (as in style transfer's Gram statistics) and say little about which character it is. Self-conditioning
    clusters these when asked (ClusterConfig.features = "backbone").
    """
    return map_statistics(backbone(images))


def map_statistics(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel mean and std of each feature map [N, C, H, W], concatenated: [N, 2 * sum(C)]."""
    return torch.cat([torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], dim=1) for f in maps], dim=1)


def frozen_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of every frozen backbone inside `module`, by name: for checks that training leaves them alone."""
    return {f"{name}.{key}": value for name, sub in module.named_modules() if isinstance(sub, FrozenBackbone)
            for key, value in sub.frozen_state().items()}
