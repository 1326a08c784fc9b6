"""The generator: a U-Net with self-attention at the low resolutions, skips, a residual output and an optional warp."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from travel.config import GeneratorConfig
from travel.errors import ConfigError
from travel.nets.blocks import ConvNormAct, SelfAttention, pad_to_multiple, warp

RESIDUAL_SCALE = 0.9  # residual output: tanh(atanh(0.9 x) + change) / 0.9


class Generator(nn.Module):
    """U-Net: stride-2 convolutions down, upsample + 3x3 convolution up, skips by concatenation."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.attention_levels is None:
            raise ConfigError("unresolved generator config (attention_levels): build it from travel.config.resolve(config)")
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

        Split from forward so the ONNX export (travel.inference.export) can pad without Python branches on the size.
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



def build_generator(cfg: GeneratorConfig) -> Generator:
    return Generator(cfg)
