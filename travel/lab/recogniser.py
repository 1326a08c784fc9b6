"""A font-invariant character recogniser: the glyph benchmark's content score (docs/METHOD.md, "Measuring a translation").

Pixel scores reward copying the source's layout; a classifier that never saw either benchmark font reads *which*
character a translation is, whatever its style. It is trained on other fonts' renders of the benchmark's
characters (Debian's WenQuanYi, Noto CJK and Droid fonts by default: neither AR PL UMing nor AR PL UKai), with
stroke-width, scale, aspect, shift and blur augmentation, and scored on the translations, on the sources (what
copying gets) and on the real targets (the ceiling). Saved as safetensors with its character list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from travel.checkpoint import atomic_write_bytes
from travel.errors import DataError, TravelError

# Font faces (path, .ttc index) the recogniser learns from; none is a benchmark font (AR PL UMing / UKai).
DEFAULT_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),  # fonts-wqy-zenhei: Hei (sans)
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),  # fonts-wqy-microhei
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),  # fonts-droid-fallback
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),  # fonts-noto-cjk: Noto Sans CJK SC
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),  # Noto Serif CJK SC
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc", 2),
)
FONT_PACKAGES = "fonts-wqy-zenhei fonts-wqy-microhei fonts-droid-fallback fonts-noto-cjk"
FORMAT = "travel-recogniser"
SIDE = 64  # the recogniser reads greyscale images at this side


class RecogniserNet(nn.Module):
    """Greyscale [N, 1, 64, 64] -> logits [N, classes]: four conv-BN-ReLU stages (one conv in the first, two after),
    each halving the side with max pooling, then a linear layer on the 4x4 map. Small enough to train on one CPU core
    in minutes (about 0.45 s a step of 64 at width 16)."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for conv in range(1 if stage == 0 else 2):
                layers += [nn.Conv2d(cin if conv == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            cin = cout
        self.body = nn.Sequential(*layers)  # 64 -> 4
        self.head = nn.Linear(cin * 4 * 4, classes)
        self.width = width

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(grey).flatten(1))


@dataclass
class Recogniser:
    net: RecogniserNet
    chars: tuple[str, ...]  # class i is chars[i]
    info: dict  # fonts, steps, seed, training accuracy

    def index(self, char: str) -> int:
        return self.chars.index(char)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """images: [N, 3 or 1, H, W] in [-1, 1] (dark ink on white). Returns the recognised class ids [N]."""
        self.net.eval()
        out = [self.net(to_grey(images[i:i + batch_size])).argmax(dim=1) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out)

    def accuracy(self, images: torch.Tensor, chars: Sequence[str]) -> float:
        """Share of `images` read as their character `chars[i]`."""
        if images.shape[0] != len(chars) or not chars:
            raise ValueError(f"{images.shape[0]} images but {len(chars)} characters")
        truth = torch.tensor([self.index(c) for c in chars])
        return float((self.predict(images) == truth).float().mean())


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, 1, 64, 64] ink in [0, 1] (1 = black ink), antialiased resize."""
    grey = images.float().mean(dim=1, keepdim=True)
    if grey.shape[-2:] != (SIDE, SIDE):
        grey = F.interpolate(grey, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
    return ((1 - grey) / 2).clamp(0, 1)


def render_set(chars: Sequence[str], fonts: Sequence[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every character in every font face that draws it: ink [M, 1, 64, 64] in [0, 1], class ids [M], fonts used."""
    from travel.lab.datasets import GlyphCoverage, load_font, render_glyph

    images, labels, used = [], [], []
    for path, index in fonts:
        if not Path(path).is_file():
            continue
        font = load_font(Path(path), index=index, em=SIDE * 2, role="recogniser")
        coverage = GlyphCoverage(font)
        drawn = 0
        for label, char in enumerate(chars):
            if not coverage.draws(char):
                continue
            image = render_glyph(font, char, size=SIDE, margin=SIDE // 16)
            if image is None:
                continue
            pixels = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8).reshape(1, SIDE, SIDE)
            images.append(1 - pixels.float() / 255)
            labels.append(label)
            drawn += 1
        if drawn:
            used.append(f"{Path(path).name}#{index}")
    if not images:
        raise DataError(f"none of the recogniser's fonts is installed; install them: sudo apt-get install {FONT_PACKAGES}")
    return torch.stack(images), torch.tensor(labels), used


def augment(ink: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random stroke width (dilate / erode), scale, aspect, shift, small rotation and blur. ink: [B, 1, S, S] in [0, 1]."""
    b = ink.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # Stroke width: a 3x3 max filter thickens ink (brush styles are bolder), a min filter thins it.
    pick = rand(b)
    thick = F.max_pool2d(ink, 3, 1, 1)
    thicker = F.max_pool2d(thick, 3, 1, 1)
    thin = -F.max_pool2d(-ink, 3, 1, 1)
    ink = torch.where((pick < 0.25)[:, None, None, None], thick, ink)
    ink = torch.where((pick > 0.9)[:, None, None, None], thicker, ink)
    ink = torch.where(((pick > 0.25) & (pick < 0.4))[:, None, None, None], thin, ink)
    # Geometry: scale 0.8-1.1, aspect +-15%, shift +-8%, rotation +-6 degrees.
    scale = 0.8 + 0.3 * rand(b)
    aspect = 1 + 0.3 * (rand(b) - 0.5)
    angle = (rand(b) - 0.5) * (12 * math.pi / 180)
    sx, sy = 1 / (scale * aspect), aspect / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = sx * cos, -sx * sin
    theta[:, 1, 0], theta[:, 1, 1] = sy * sin, sy * cos
    theta[:, :, 2] = (rand(b, 2) - 0.5) * 0.16
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    ink = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Blur: a Gaussian of sigma 0-1.2 px on half the batch.
    sigma = 1.2 * rand(b) * (rand(b) < 0.5)
    taps = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, 7]
    padded = F.pad(ink, (3, 3, 3, 3), mode="replicate").transpose(0, 1)  # [1, B, S+6, S+6]
    ink = F.conv2d(padded, kernel[:, None, None, :], groups=b)
    ink = F.conv2d(ink, kernel[:, None, :, None], groups=b).transpose(0, 1)
    return ink.clamp(0, 1)


def train_recogniser(
    chars: Sequence[str], *, fonts: Sequence[tuple[str, int]] = DEFAULT_FONTS, steps: int = 1500, batch_size: int = 64,
    seed: int = 0, width: int = 16, progress: Callable[[int, int], None] | None = None,
) -> Recogniser:
    """Train on renders of `chars` in `fonts`, augmented afresh every step. Deterministic for a seed."""
    chars = tuple(dict.fromkeys(chars))
    if len(chars) < 2:
        raise DataError("the recogniser needs at least 2 distinct characters")
    images, labels, used = render_set(chars, fonts)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RecogniserNet(len(chars), width)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
        net.train()
        correct = seen = 0
        for step in range(steps):
            pick = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
            logits = net(augment(images[pick], generator))
            loss = F.cross_entropy(logits, labels[pick], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if step >= steps - max(1, steps // 10):  # accuracy over the last tenth of training, on augmented renders
                correct += int((logits.argmax(1) == labels[pick]).sum())
                seen += batch_size
            if progress is not None:
                progress(step + 1, steps)
    info = {"fonts": used, "renders": int(images.shape[0]), "steps": steps, "batch_size": batch_size, "seed": seed,
            "train_accuracy_augmented": correct / max(seen, 1), "width": width}
    return Recogniser(net.eval(), chars, info)


def save_recogniser(recogniser: Recogniser, path: str | Path) -> Path:
    from safetensors.torch import save

    metadata = {"format": FORMAT, "chars": json.dumps("".join(recogniser.chars), ensure_ascii=False),
                "info": json.dumps(recogniser.info)}
    state = {k: v.contiguous() for k, v in recogniser.net.state_dict().items()}
    path = Path(path)
    atomic_write_bytes(path, save(state, metadata=metadata))
    return path


def load_recogniser(path: str | Path) -> Recogniser:
    """A recogniser saved by save_recogniser; anything else is refused with one line (safetensors: no code runs)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such recogniser file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
        if metadata.get("format") != FORMAT:
            raise ValueError("not a travel recogniser")
        chars = tuple(json.loads(metadata["chars"]))
        info = json.loads(metadata.get("info", "{}"))
        net = RecogniserNet(len(chars), int(info.get("width", 16)))
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file raises many kinds
        raise TravelError(f"{path}: not a usable recogniser ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    return Recogniser(net.eval(), chars, info)


def dataset_characters(data_dir: str | Path, split: str = "test") -> dict[str, dict[str, str]]:
    """splits.json of a `travel data glyphs` folder: {"testA": {file stem: character}, "testB": ...}."""
    path = Path(data_dir) / "splits.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (the recogniser needs a `travel data glyphs` folder)")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        return {side: dict(splits[f"{split}{side}"]) for side in ("A", "B")}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable splits ({exc})") from None

