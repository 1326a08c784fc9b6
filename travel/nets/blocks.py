"""Building blocks of the networks: attention, normalisation, convolutions, padding and warping. Plain ints in, no configs."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


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


def _divisor_at_most(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g
