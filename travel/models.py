"""The networks: a U-Net generator with self-attention and a spectrally normalised Siamese discriminator."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from travel.config import DiscriminatorConfig, GeneratorConfig

# ---------------------------------------------------------------------------------------------
# Blocks: plain ints in, no configs.


# Attention on large maps (docs/METHOD.md, "Attention on large images"). Training crops give every attention block at
# most 32 x 32 positions; an ordinary photo gives the half-resolution block hundreds of times more, and the score
# matrix grows with the square of that (17.5 GB for a 720 x 360 photo).
MAX_ATTENTION_CONTEXT = 64 * 64  # keys per attention block; larger maps attend to block means (pooled keys/values)
EXPLICIT_ATTENTION_PAIRS = 1024 * 1024  # query x key pairs up to which the CPU builds the score matrix itself


class SelfAttention(nn.Module):
    """SAGAN-style self-attention over all positions, with a residual gate that starts closed (0).

    A map with more than MAX_ATTENTION_CONTEXT positions attends to the means of s x s blocks of its positions
    (the smallest s that brings the count within the limit), each weighted by how many positions it covers, so a
    map whose features are constant within each block gets exactly the full attention. Maps of training size are
    never pooled.
    """

    def __init__(self, channels: int, *, spectral: bool = False) -> None:
        super().__init__()
        inner = key_channels(channels)
        wrap = spectral_norm if spectral else (lambda m: m)
        self.query = wrap(nn.Conv2d(channels, inner, 1))
        self.key = wrap(nn.Conv2d(channels, inner, 1))
        self.value = wrap(nn.Conv2d(channels, channels, 1))
        self.gate = nn.Parameter(torch.zeros(()))
        # Tiled translation (travel.inference) sets keys and values of the whole image here, so a tile attends
        # to the whole image as the untiled pass does. A plain attribute, never in a state dict; None in training.
        self.context: AttentionContext | None = None

    def keys_values(self, x: torch.Tensor) -> "AttentionContext":
        """Keys [N, M, inner], values [N, M, C] and a per-key log-weight ([M], or None when all weigh alike) of a
        map x [N, C, h, w]: every position, or the means of s x s blocks when h * w > MAX_ATTENTION_CONTEXT."""
        h, w = x.shape[-2:]
        s = context_pooling(h, w)
        bias = None
        if s > 1:
            # The 1 x 1 convolutions commute with the mean, so pooling x pools the keys and values. Edge blocks
            # cover fewer positions; their log-share of a full block's s * s makes them weigh what they cover.
            x = F.avg_pool2d(x, s, ceil_mode=True, count_include_pad=False)
            if h % s or w % s:
                ones = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
                bias = torch.log(F.avg_pool2d(ones, s, ceil_mode=True, divisor_override=1) / (s * s)).flatten()
        return AttentionContext(self.key(x).flatten(2).transpose(1, 2), self.value(x).flatten(2).transpose(1, 2), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # [N, HW, inner]
        context = self.keys_values(x) if self.context is None else self.context
        k, v = (t.expand(n, -1, -1) for t in (context.keys, context.values))  # [N, M, inner], [N, M, C]
        out = attend(q, k, v, context.bias)  # [N, HW, C]
        return x + self.gate * out.transpose(1, 2).reshape(n, c, h, w)


def key_channels(channels: int) -> int:
    """The width of an attention block's queries and keys over `channels` channels (values keep all of them)."""
    return max(channels // 8, 4)


class AttentionContext(NamedTuple):
    """What queries attend to: keys [N or 1, M, inner], values [N or 1, M, C], log-weights [M] or None."""

    keys: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None = None


def context_pooling(height: int, width: int, limit: int | None = None) -> int:
    """The block side s whose means an attention block over a height x width map attends to (1: every position)."""
    limit = MAX_ATTENTION_CONTEXT if limit is None else limit
    s = 1
    while -(-height // s) * -(-width // s) > limit:
        s += 1
    return s


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q [N, L, d], k [N, M, d], v [N, M, C], bias [M] or None -> [N, L, C]."""
    scale = q.shape[-1] ** -0.5
    if q.device.type == "cpu" and q.shape[1] * k.shape[1] <= EXPLICIT_ATTENTION_PAIRS:
        # Training-size maps: the score matrix is small, and for these shapes (values wider than keys) the CPU
        # SDPA takes its math path, which builds the same matrix, only slower (a 256 px translation, 16 channels,
        # NHWC: 83.5 -> 72.1 ms median; benchmarks/inference_ab.py, docs/BENCHMARKS.md).
        scores = torch.bmm(q * scale, k.transpose(1, 2))  # [N, L, M]
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return torch.bmm(weights, v)
    mask = None if bias is None else bias.to(q.dtype).expand(1, 1, q.shape[1], -1)
    if q.device.type == "cpu" and v.shape[-1] > q.shape[-1]:
        # Zero-padded to the values' width, queries and keys reach the CPU's fused (flash) kernel, which never
        # holds the L x M matrix: memory stays linear in L, and it is 3-5x faster than the matrix at 16k positions.
        extra = v.shape[-1] - q.shape[-1]
        q, k = F.pad(q, (0, extra)), F.pad(k, (0, extra))
    # On a GPU, SDPA picks a memory-efficient kernel, so large maps do not build an L x M matrix either.
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=mask, scale=scale).squeeze(1)


class Norm2d(nn.Module):
    """Group normalisation, optionally modulated per style: scale and shift looked up from a style id."""

    def __init__(self, channels: int, *, groups: int, num_styles: int = 0) -> None:
        super().__init__()
        self.groups = _divisor_at_most(channels, groups)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.style = nn.Embedding(num_styles, 2 * channels) if num_styles else None
        if self.style is not None:
            # Random, not zero: with TTUR's small generator lr a zero embedding barely moves in a short run
            # (measured: 200 steps gave identical outputs for every style). The output stays the identity
            # at initialisation anyway, because the generator's head starts at zero.
            nn.init.normal_(self.style.weight, std=0.5)
        # Tiled translation (travel.inference) sets the whole image's per-group mean and variance here, so that
        # every tile is normalised alike instead of by its own statistics (which shows seams). A plain
        # attribute, so never in a state dict; training leaves it at None.
        self.fixed_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # mean, var: [N or 1, G, 1] each

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if self.fixed_stats is None:
            x = F.group_norm(x, self.groups, self.weight, self.bias, eps=1e-5)
        else:
            x = self._fixed_group_norm(x, *self.fixed_stats)
        if self.style is not None and style is not None:
            scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)  # [N, C, 1, 1] each
            x = x * (1 + scale) + shift
        return x

    def _fixed_group_norm(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, -1)  # [N, G, C/G * H * W]
        x = ((grouped - mean) * torch.rsqrt(var + 1e-5)).reshape(n, c, h, w)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNormAct(nn.Module):
    def __init__(
        self, cin: int, cout: int, *, stride: int = 1, groups: int, num_styles: int = 0, padding: str = "zeros"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=padding)
        self.norm = Norm2d(cout, groups=groups, num_styles=num_styles)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x), style))


# ---------------------------------------------------------------------------------------------
# Generator.

RESIDUAL_SCALE = 0.9  # residual output: tanh(atanh(0.9 x) + change) / 0.9


class Generator(nn.Module):
    """U-Net: stride-2 convolutions down, upsample + 3x3 convolution up, skips by concatenation."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g, pad = cfg.norm_groups, cfg.padding
        self.stem = ConvNormAct(cfg.channels, cfg.width(0), groups=g, padding=pad)
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        for lvl in range(1, cfg.depth + 1):
            cin, cout = cfg.width(lvl - 1), cfg.width(lvl)
            self.down.append(
                nn.ModuleList(
                    [ConvNormAct(cin, cout, stride=2, groups=g, padding=pad), ConvNormAct(cout, cout, groups=g, padding=pad)]
                )
            )
            self.down_attn.append(SelfAttention(cout) if lvl in cfg.attention_levels else nn.Identity())
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for lvl in range(cfg.depth, 0, -1):
            cin, cout = cfg.width(lvl), cfg.width(lvl - 1)
            self.up.append(
                nn.ModuleList(
                    [
                        ConvNormAct(cin, cout, groups=g, num_styles=cfg.num_styles, padding=pad),
                        ConvNormAct(self._skip(lvl - 1) + cout, cout, groups=g, num_styles=cfg.num_styles, padding=pad),
                    ]
                )
            )
            has_attn = (lvl - 1) in cfg.attention_levels
            self.up_attn.append(SelfAttention(cout) if has_attn else nn.Identity())
        # One flow head per decoder level: the displacement increment (x, y, in full-resolution pixels) at that level.
        self.flow = nn.ModuleList()
        if cfg.warp:
            for lvl in range(cfg.depth, 0, -1):
                head = nn.Conv2d(cfg.width(lvl - 1), 2, 3, padding=1, padding_mode=pad)
                nn.init.zeros_(head.weight)  # no displacement at initialisation
                nn.init.zeros_(head.bias)
                self.flow.append(head)
        self.head = nn.Conv2d(cfg.width(0), cfg.channels, 3, padding=1, padding_mode=pad)
        if cfg.residual:
            nn.init.zeros_(self.head.weight)  # an untrained generator returns its input
            nn.init.zeros_(self.head.bias)

    def _skip(self, level: int) -> int:
        """Channels the skip from `level` adds to the decoder there (0 where cfg.skip_from drops it)."""
        return self.cfg.width(level) if level >= self.cfg.skip_from else 0

    def forward(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """source: [N, C, H, W] in [-1, 1], any H and W; style: [N] cluster ids or None. Returns [N, C, H, W]."""
        if source.ndim != 4 or source.shape[1] != self.cfg.channels:
            raise ValueError(f"expected [N, {self.cfg.channels}, H, W], got {tuple(source.shape)}")
        h, w = source.shape[-2:]
        return self.forward_padded(pad_to_multiple(source, self.cfg.multiple), style)[..., :h, :w]

    def forward_padded(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """source: [N, C, H, W] with H and W multiples of cfg.multiple. Returns [N, C, H, W].

        Split from forward so the ONNX export (travel.export) can pad without Python branches on the size.
        """
        if self.cfg.num_styles and style is None:
            style = torch.zeros(source.shape[0], dtype=torch.long, device=source.device)
        x = self.stem(source)
        skips = [x]
        for (conv_down, conv), attn in zip(self.down, self.down_attn):
            x = attn(conv(conv_down(x)))
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        flow: torch.Tensor | None = None
        size = source.shape[-2:]
        for i, (level, (conv_up, conv), attn) in enumerate(zip(range(self.cfg.depth - 1, -1, -1), self.up, self.up_attn)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = conv_up(x, style)
            skip = skips.pop()
            if self.cfg.warp:
                step = self.flow[i](x)
                flow = step if flow is None else F.interpolate(flow, scale_factor=2.0, mode="bilinear") + step
            if level >= self.cfg.skip_from:
                x = torch.cat([x, skip if flow is None else warp(skip, flow, size)], dim=1)
            x = conv(x, style)
            x = attn(x)
        if flow is not None:
            source = warp(source, flow, size)
        change = self.head(x)
        if self.cfg.residual:
            # Identity at initialisation, in tanh's pre-activation space. The input is scaled by 0.9 first:
            # pure white or black (+-1) would otherwise sit deep in tanh's saturation (slope 0.002 at
            # atanh(0.999)), and the generator could hardly change large white or black areas (slope 0.21 here).
            # Clamped to [-1, 1] here, not only when written: the discriminator must never see values real images
            # cannot have (anything beyond +-1 would mark a translation as fake). Identity at init is unaffected.
            return (torch.tanh(torch.atanh(source.clamp(-1.0, 1.0) * RESIDUAL_SCALE) + change) / RESIDUAL_SCALE).clamp(-1.0, 1.0)
        return torch.tanh(change)


def warp(x: torch.Tensor, flow: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Sample x [N, C, h, w] at each position plus flow [N, 2, h, w], a displacement (x, y) in pixels of an image of
    `size` (H, W), of which x is a 2**k downsampling. Bilinear, the border replicated beyond the edge."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1  # pixel centres, align_corners=False
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
    grid = torch.stack(
        [xs[None, None, :] + flow[:, 0] * (2.0 / size[1]), ys[None, :, None] + flow[:, 1] * (2.0 / size[0])], dim=-1
    )
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right up to a multiple (reflect where possible, replicate for tiny images)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# ---------------------------------------------------------------------------------------------
# Discriminator.


class Discriminator(nn.Module):
    """Siamese encoder: image -> vector in R^vec_len. Every weight layer is spectrally normalised.

    The scratch family. travel.projected holds the other (frozen pretrained features); both offer forward,
    patch_weights, features and rotation_logits, and the training loop uses nothing else.
    """

    patch_weights = None  # one vector per image, not per patch

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = spectral_norm(nn.Conv2d(cfg.channels, cfg.width(0), 3, padding=1))
        blocks = []
        for lvl in range(1, cfg.depth + 1):
            blocks.append(spectral_norm(nn.Conv2d(cfg.width(lvl - 1), cfg.width(lvl), 4, stride=2, padding=1)))
            blocks.append(nn.LeakyReLU(0.2))
            if lvl == cfg.attention_level:
                blocks.append(SelfAttention(cfg.width(lvl), spectral=True))
        self.trunk = nn.Sequential(*blocks)
        self.feature_dim = cfg.width(cfg.depth)
        self.head = spectral_norm(nn.Linear(self.feature_dim, cfg.vec_len))
        self.rotation = spectral_norm(nn.Linear(self.feature_dim, 4)) if cfg.rotation_head else None

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [N, F], used by the vector head, the rotation head and clustering."""
        x = F.leaky_relu(self.stem(image), 0.2)
        x = self.trunk(x)
        # Global sum pooling, as in SN-GAN/BigGAN: with every layer 1-Lipschitz, mean pooling shrinks the
        # embedding so far (entries ~0.03 at 128px) that the margins m and delta are out of reach.
        return x.sum(dim=(2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [N, C, H, W] in [-1, 1]. Returns the embedding [N, vec_len]."""
        return self.head(self.features(image))

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            raise RuntimeError("this discriminator was built without a rotation head")
        return self.rotation(features)


def build_generator(cfg: GeneratorConfig) -> Generator:
    return Generator(cfg)


def _family(name: str) -> tuple[type[nn.Module], type[nn.Module]]:
    """(discriminator, separate Siamese embedding) classes of a discriminator family. The projected family is
    imported here only, so that translation, the demo and ONNX export (which need generators alone) never import
    timm."""
    if name == "scratch":
        return Discriminator, Discriminator
    if name == "projected":
        from travel.projected import ProjectedDiscriminator, ProjectedEmbedding

        return ProjectedDiscriminator, ProjectedEmbedding
    raise ValueError(f"unknown discriminator family {name!r}")


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    """The discriminator of cfg.family."""
    return _family(cfg.family)[0](cfg)


def build_siamese(cfg: DiscriminatorConfig) -> nn.Module:
    """The separate Siamese embedding S of cfg.family (siamese = "separate"): a second scratch encoder with its own
    weights, or for the projected family an SN linear head on the frozen backbone's pooled features."""
    return _family(cfg.family)[1](cfg)


def _divisor_at_most(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g
