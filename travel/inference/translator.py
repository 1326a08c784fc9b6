"""Inference: find a checkpoint by name or path, and translate images of any size with one call."""

from __future__ import annotations

import json
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from travel.checkpoint import Weights, load_weights, read_metadata
from travel.data import DEFAULT_MAX_PIXELS, image_from_pil, image_to_tensor, resize_shorter, tensor_to_image
from travel.errors import CheckpointError, ConfigError
from travel.inference.memory import (  # check_tiling is also this module's: tests and callers import it from here
    DEFAULT_MEMORY_BUDGET, DEFAULT_OVERLAP, MemoryBudgetError, Plan, check_tiling, format_bytes, images_per_pass,
    plan_translation,
)
from travel.nets.blocks import Norm2d, SelfAttention
from travel.nets.generator import Generator
from travel.runtime import resolve_device

DEFAULT_TILE = 512  # translate_tiled's tile side when none is given (plans choose their own)


# ---------------------------------------------------------------------------------------------
# Finding checkpoints: a .safetensors file, a run folder, or a name among shipped weights and runs/.


def package_data_dir(package: str, checkout_folder: str) -> Path:
    """A folder shipped as package data (`travel.weights`, `travel.examples`), or the repo's own in a source checkout."""
    try:
        from importlib.resources import files

        folder = Path(str(files(package)))
        if folder.is_dir():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / checkout_folder


def shipped_weights_dir() -> Path:
    """The released weights: package data `travel.weights`, or the repo's weights/ in a source checkout."""
    return package_data_dir("travel.weights", "weights")


def runs_dir() -> Path:
    """The user's run folders: $TRAVEL_RUNS, or runs/ in the working directory (where `travel fit` puts them)."""
    return Path(os.environ.get("TRAVEL_RUNS", "runs"))


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A .safetensors file, a run folder, or a name: the user's runs/NAME/NAME.safetensors, then shipped weights."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        preferred = candidate / f"{candidate.name}.safetensors"
        if preferred.is_file():
            return preferred
        found = sorted(candidate.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        if found:
            raise CheckpointError(f"{candidate}: several .safetensors files in this folder; give one of them")
        if (candidate / "state.pt").is_file():
            raise CheckpointError(f"{candidate}: this run has not saved its weights yet (no .safetensors)")
        raise CheckpointError(f"{candidate}: no .safetensors checkpoint in this folder")
    name = str(name_or_path)
    if candidate.suffix == ".safetensors" or len(candidate.parts) > 1:
        raise CheckpointError(f"{candidate}: no such checkpoint file")
    for path in (runs_dir() / name / f"{name}.safetensors", shipped_weights_dir() / f"{name}.safetensors"):
        if path.is_file():
            return path
    available = ", ".join(available_names()) or "none (train one with `travel fit`)"
    raise CheckpointError(f"no checkpoint named {name!r} (available: {available})")


def available_names() -> list[str]:
    return sorted({info.name for info in list_checkpoints()})


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint `--ckpt NAME` can find, read from its metadata only (the tensors are not loaded)."""

    name: str
    path: Path
    origin: str  # "runs" or "shipped"
    source_domain: str = ""
    target_domain: str = ""
    image_size: int = 0
    date: str = ""
    steps: int = 0
    problem: str = ""  # why it cannot be used, if it cannot


def list_checkpoints() -> list[CheckpointInfo]:
    """Every named checkpoint: the user's runs/NAME/NAME.safetensors first, then the shipped weights."""
    found: list[tuple[str, Path, str]] = []
    runs = runs_dir()
    if runs.is_dir():
        found += [(p.stem, p, "runs") for p in sorted(runs.glob("*/*.safetensors")) if p.stem == p.parent.name]
    shipped = shipped_weights_dir()
    if shipped.is_dir():
        found += [(p.stem, p, "shipped") for p in sorted(shipped.glob("*.safetensors"))]
    return [_describe(name, path, origin) for name, path, origin in found]


def _describe(name: str, path: Path, origin: str) -> CheckpointInfo:
    try:
        metadata = read_metadata(_header_bytes(path), name=str(path))
    except (CheckpointError, OSError) as exc:
        return CheckpointInfo(name, path, origin, problem=str(exc))
    try:
        summary = json.loads(metadata.get("summary", "{}"))
        summary = summary if isinstance(summary, dict) else {}
        steps = int(summary.get("steps", 0) or 0)
        image_size = int(metadata.get("image_size", "0") or 0)
    except (json.JSONDecodeError, TypeError, ValueError):
        summary, steps, image_size = {}, 0, 0
    return CheckpointInfo(
        name, path, origin, source_domain=metadata.get("source_domain", "A"), target_domain=metadata.get("target_domain", "B"),
        image_size=image_size, date=str(summary.get("date", ""))[:10], steps=steps,
    )


def _header_bytes(path: Path) -> bytes:
    """The length prefix and JSON header of a safetensors file: all its metadata, without the tensors."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return prefix
        length = int.from_bytes(prefix, "little")
        return prefix + handle.read(min(length, 100_000_001))


# ---------------------------------------------------------------------------------------------
# Translating.


def inference_layout(generator: Generator) -> Generator:
    """The generator in eval mode with NHWC (channels_last) weights, the layout inference runs in.

    oneDNN's CPU convolutions and tensor-core GPU convolutions both run NHWC; fed NCHW, the full-resolution
    convolutions pay for reordering (measured on the CPU: 15-20% of a 256 px translation; docs/BENCHMARKS.md).
    """
    return generator.eval().to(memory_format=torch.channels_last)


def run_generator(generator: Generator, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass of an `inference_layout` generator: [N, 3, H, W] float -> [N, 3, H, W]."""
    return generator(source.contiguous(memory_format=torch.channels_last), style)


class Translator:
    """A trained translator: `translator(image)` returns the translated PIL image at the input's size.

    Every image is planned by travel.inference.memory's one rule: one pass when its estimated peak fits `memory_budget`
    bytes, else overlapping tiles that share the whole image's normalisation statistics and attention keys and
    are blended with a cosine window, so memory stays within the budget and tiles leave no seams. An image that
    cannot fit even in tiles is refused (MemoryBudgetError) before any work.
    """

    def __init__(
        self, weights: Weights, *, device: str | torch.device = "auto", name: str = "", memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        if memory_budget < 1:
            raise ConfigError(f"memory_budget must be > 0 bytes, got {memory_budget}")
        self.weights = weights
        self.name = name
        self.memory_budget = memory_budget
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.generator: Generator = inference_layout(weights.build().to(self.device))
        self._lock = threading.Lock()  # tiling hands shared statistics to the blocks; one translation at a time

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, device: str | torch.device = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> "Translator":
        """Load by name (runs/ then shipped weights), by .safetensors path, or by run folder."""
        path = resolve_checkpoint(name_or_path)
        return cls(load_weights(path), device=device, name=path.stem, memory_budget=memory_budget)

    def plan(
        self, width: int, height: int, *, tile: int | None = None, overlap: int = DEFAULT_OVERLAP, memory_budget: int | None = None
    ) -> Plan:
        """How an image of width x height is translated within the budget (travel.inference.memory.plan_translation)."""
        budget = self.memory_budget if memory_budget is None else memory_budget
        return plan_translation(self.generator.cfg, height, width, budget=budget, tile=tile, overlap=overlap)

    @property
    def multiple(self) -> int:
        """Sides are padded to a multiple of this inside the network; tiles start on it."""
        return self.generator.cfg.multiple

    # -- tensors ------------------------------------------------------------------------------

    @torch.no_grad()
    def translate_tensor(self, source: torch.Tensor, *, style: int | None = None) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1] on the CPU; any H and W, one forward pass."""
        with self._lock:
            return self._forward(source, style).float().cpu()

    def _forward(self, source: torch.Tensor, style: int | None) -> torch.Tensor:
        return run_generator(self.generator, source.to(self.device, torch.float32), self.style_ids(style, source.shape[0]))

    @contextmanager
    def _out_of_memory_is_an_error(self, plan: Plan, count: int = 1) -> Iterator[None]:
        """The allocator's failure as one line: this machine had less free memory than the budget promised."""
        try:
            yield
        except (MemoryError, RuntimeError) as exc:  # torch's CPU and CUDA allocators raise RuntimeError subclasses
            text = str(exc).lower()
            if not isinstance(exc, MemoryError) and "alloc" not in text and "out of memory" not in text:
                raise
            images = f"{count} images of " if count > 1 else ""
            how = f"in {plan.tile} px tiles" if plan.tiled else "in one pass"
            raise MemoryBudgetError(
                f"out of memory translating {images}{plan.width} x {plan.height} {how} (planned for about "
                f"{format_bytes(plan.needed * count if not plan.tiled else plan.needed)} within the "
                f"{format_bytes(plan.budget)} budget): this machine has less free; lower --memory-budget"
            ) from None

    @property
    def num_styles(self) -> int:
        """Output styles (self-conditioning clusters) this model offers; 0 for an unconditional model."""
        return self.weights.config.num_styles

    @property
    def default_style(self) -> int | None:
        """The style used when none is asked for: the most frequent cluster of the training targets."""
        if not self.num_styles:
            return None
        frequencies = self.weights.summary.get("style_frequencies")
        if isinstance(frequencies, list) and len(frequencies) == self.num_styles:
            return max(range(self.num_styles), key=lambda k: frequencies[k])
        return 0

    def style_ids(self, style: int | None, count: int) -> torch.Tensor | None:
        """[count] ids for `style` on the device, or None; a style the model does not have is a ConfigError."""
        if style is None:
            style = self.default_style
        if style is None:
            return None
        styles = self.weights.config.num_styles
        if not 0 <= style < max(styles, 1):
            raise ConfigError(f"style {style} is out of range: this model has {max(styles, 1)} style(s), 0..{max(styles, 1) - 1}")
        return torch.full((count,), style, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def translate_tiled(
        self,
        source: torch.Tensor,
        *,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        style: int | None = None,
        stats_pixels: int | None = None,
        tile_batch: int = 1,
    ) -> torch.Tensor:
        """One image [3, H, W] (uint8 0..255, or float in [-1, 1]) -> its translation, same dtype and size.

        Tiles share what the untiled pass computes over the whole image: each Norm2d's statistics and each
        attention block's keys and values. They are gathered in one pass over the whole image, downscaled to
        at most `stats_pixels` (default: what the memory budget leaves; exact when the whole image fits).
        Overlapping tiles are blended with a cosine ramp.
        """
        if source.ndim != 3 or source.shape[0] != 3:
            raise ValueError(f"expected one image [3, H, W], got {tuple(source.shape)}")
        tile, overlap = check_tiling(tile, overlap, self.multiple)
        height, width = source.shape[-2:]
        if stats_pixels is None:
            stats_pixels = self.plan(width, height, tile=tile, overlap=overlap).stats_pixels or height * width
        layout = TileLayout.build(height, width, tile=tile, overlap=overlap, multiple=self.multiple)
        with self._lock:
            shared = _SharedContext(self.generator)
            try:
                whole = _downscaled(source, stats_pixels)  # [1, 3, h, w], h * w <= stats_pixels
                with shared.gathering():
                    self._forward(whole, style)
                return self._blend_tiles(source, layout, style=style, tile_batch=tile_batch)
            finally:
                shared.clear()

    def _tile_batches(
        self, source: torch.Tensor, layout: "TileLayout", tile_batch: int, rows: Sequence[int] | None = None
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """(tile indices (row, col), [n, 3, h, w] float batch) for the tiles of `rows`, equal sizes batched."""
        by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for r in range(len(layout.rows)) if rows is None else rows:
            for c in range(len(layout.cols)):
                (top, bottom), (left, right) = layout.rows[r], layout.cols[c]
                by_size.setdefault((bottom - top, right - left), []).append((r, c))
        for spans in by_size.values():
            for start in range(0, len(spans), tile_batch):
                chunk = spans[start:start + tile_batch]
                yield chunk, torch.stack([_to_float(source[:, slice(*layout.rows[r]), slice(*layout.cols[c])]) for r, c in chunk])

    def _blend_tiles(self, source: torch.Tensor, layout: "TileLayout", *, style: int | None, tile_batch: int) -> torch.Tensor:
        height, width = source.shape[-2:]
        row_weights, col_weights = blend_windows(layout.rows), blend_windows(layout.cols)
        result = torch.empty_like(source)
        # Only a band of rows is accumulated in float at a time: the rows no later tile touches are
        # finished as soon as a row of tiles is done, so memory beyond the image itself stays small.
        band_top = 0
        band = torch.zeros(4, 0, width)  # [RGB sum, weight sum] over rows band_top..
        for r, (top, bottom) in enumerate(layout.rows):
            if band_top + band.shape[1] < bottom:
                band = torch.cat([band, torch.zeros(4, bottom - band_top - band.shape[1], width)], dim=1)
            for spans, batch in self._tile_batches(source, layout, tile_batch, rows=[r]):
                translated = self._forward(batch, style).float().cpu()  # [n, 3, tile_h, tile_w]
                for (_, c), image in zip(spans, translated):
                    left, right = layout.cols[c]
                    weight = row_weights[r][:, None] * col_weights[c][None, :]  # [tile_h, tile_w]
                    band[:3, top - band_top:bottom - band_top, left:right] += image * weight
                    band[3, top - band_top:bottom - band_top, left:right] += weight
            done = layout.rows[r + 1][0] if r + 1 < len(layout.rows) else height
            finished = band[:, :done - band_top]
            values = finished[:3] / finished[3:].clamp_min(1e-12)  # [3, rows, W] in [-1, 1]
            result[:, band_top:done] = _to_dtype(values, source.dtype)
            band, band_top = band[:, done - band_top:], done
        return result

    # -- PIL images ---------------------------------------------------------------------------

    def prepare(self, image: Image.Image, *, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The preprocessing training uses: orientation and colour to 8-bit RGB, then an optional resize."""
        image = image_from_pil(image, max_pixels=max_pixels)
        if size:
            if size < 1:
                raise ConfigError(f"--size must be >= 1, got {size}")
            image = resize_shorter(image, size)
        return image

    def __call__(
        self,
        image: Image.Image,
        *,
        size: int | None = None,
        style: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        memory_budget: int | None = None,
    ) -> Image.Image:
        """Translate one PIL image. tile=None: as the memory budget allows (one pass, else tiles); 0: one pass only."""
        return self.translate_batch(
            [image], size=size, style=style, max_pixels=max_pixels, tile=tile, overlap=overlap, memory_budget=memory_budget
        )[0]

    def translate_batch(
        self,
        images: Sequence[Image.Image],
        *,
        size: int | None = None,
        style: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        memory_budget: int | None = None,
        batch_size: int = 8,
    ) -> list[Image.Image]:
        """Translate a list of PIL images; images of one size share a forward pass, as many as the budget allows.

        Every image is planned before any is translated, so one that cannot fit the budget is refused
        (MemoryBudgetError) before work is spent on the others.
        """
        budget = self.memory_budget if memory_budget is None else memory_budget
        prepared = [self.prepare(image, size=size, max_pixels=max_pixels) for image in images]
        plans = [self.plan(*image.size, tile=tile, overlap=overlap, memory_budget=budget) for image in prepared]
        results: list[Image.Image | None] = [None] * len(prepared)
        whole: dict[tuple[int, int], list[int]] = {}
        for i, (image, plan) in enumerate(zip(prepared, plans)):
            if plan.tiled:
                with self._out_of_memory_is_an_error(plan):
                    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # [3, H, W] uint8
                    translated = self.translate_tiled(
                        pixels, tile=plan.tile, overlap=plan.overlap, style=style, stats_pixels=plan.stats_pixels
                    )
                    del pixels
                    results[i] = Image.fromarray(translated.permute(1, 2, 0).numpy(), mode="RGB")
            else:
                whole.setdefault(image.size, []).append(i)
        for (width, height), indices in whole.items():
            per_pass = images_per_pass(self.generator.cfg, height, width, min(batch_size, len(indices)), budget)
            for start in range(0, len(indices), per_pass):
                chunk = indices[start:start + per_pass]
                with self._out_of_memory_is_an_error(plans[chunk[0]], len(chunk)):
                    batch = torch.stack([image_to_tensor(prepared[i]) for i in chunk])  # [n, 3, H, W]
                    for i, translated in zip(chunk, self.translate_tensor(batch, style=style)):
                        results[i] = tensor_to_image(translated)
        return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# Tiling helpers: plain functions, so the tests can check the layout and the window directly.


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie: every tile is one row span crossed with one column span."""

    rows: list[tuple[int, int]]  # (top, bottom) of each row of tiles
    cols: list[tuple[int, int]]  # (left, right) of each column of tiles

    @classmethod
    def build(cls, height: int, width: int, *, tile: int, overlap: int, multiple: int) -> "TileLayout":
        return cls(tile_spans(height, tile, overlap, multiple), tile_spans(width, tile, overlap, multiple))


class _SharedContext:
    """Gathers, through forward hooks, what the untiled pass computes over the whole image, and hands it to tiles.

    Each Norm2d gets the per-group mean and variance of its input (as F.group_norm computes them, padding
    included); each SelfAttention gets the keys and values of all positions.
    """

    def __init__(self, generator: Generator) -> None:
        self.norms = [m for m in generator.modules() if isinstance(m, Norm2d)]
        self.attentions = [m for m in generator.modules() if isinstance(m, SelfAttention)]

    @contextmanager
    def gathering(self) -> Iterator[None]:
        """Record during one forward pass of a single image ([1, 3, h, w]), then hand the results over."""
        handles = [norm.register_forward_pre_hook(self._norm_hook) for norm in self.norms]
        handles += [attn.register_forward_pre_hook(self._attention_hook) for attn in self.attentions]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _norm_hook(norm: Norm2d, args: tuple) -> None:
        x = args[0]  # [1, C, h, w]
        var, mean = torch.var_mean(x.reshape(x.shape[0], norm.groups, -1), dim=2, unbiased=False, keepdim=True)
        norm.fixed_stats = (mean, var)  # [1, G, 1] each: this pass normalises with them too, as group_norm would

    @staticmethod
    def _attention_hook(attn: SelfAttention, args: tuple) -> None:
        attn.context = attn.keys_values(args[0])  # of [1, C, h, w]: pooled as the untiled pass pools them

    def clear(self) -> None:
        for norm in self.norms:
            norm.fixed_stats = None
        for attn in self.attentions:
            attn.context = None


def tile_spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, stop) of each tile along one side: evenly spread, starting on multiples of `multiple`.

    Starting on the multiple keeps every tile on the whole image's downsampling grid, so a tile's
    interior computes what the whole image would; neighbours share at least `overlap` pixels.
    """
    if length <= tile:
        return [(0, length)]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    while True:  # rounding starts to the multiple can eat into an overlap; then one more tile
        spacing = (length - tile) / (count - 1)
        starts = {int(i * spacing) // multiple * multiple for i in range(count - 1)}
        starts.add(math.ceil((length - tile) / multiple) * multiple)  # the last tile reaches the end
        spans = [(start, min(start + tile, length)) for start in sorted(starts)]
        if all(before[1] - after[0] >= overlap for before, after in zip(spans, spans[1:])):
            return spans
        count += 1


def blend_windows(spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per tile, a weight for each pixel along the side: 1 inside, a cosine ramp across each overlap.

    Where two tiles overlap, one ramps down as the other ramps up (sin^2 + cos^2 = 1), so the blend is a
    smooth hand-over and each tile's edge, where its convolutions saw padding, weighs nothing.
    """
    windows = []
    for i, (start, stop) in enumerate(spans):
        weight = torch.ones(stop - start)
        if i > 0 and spans[i - 1][1] > start:
            shared = spans[i - 1][1] - start
            weight[:shared] *= _ramp(shared)
        if i + 1 < len(spans) and spans[i + 1][0] < stop:
            shared = stop - spans[i + 1][0]
            weight[-shared:] *= _ramp(shared).flip(0)
        windows.append(weight)
    return windows


def _ramp(length: int) -> torch.Tensor:
    """Rises from 0 to 1 across `length` pixels: 0 over the first quarter, a cosine ramp, 1 over the last quarter.

    The quarter next to a tile's edge is left to its neighbour, because there the tile's convolutions saw their
    padding (zeros or replicated edge pixels, GeneratorConfig.padding) instead of the image (measured with a
    zero-padded generator, the default then, tile 192, overlap 32: mean error against the untiled pass in the
    overlaps 0.0094 with a ramp across the whole overlap, 0.0085 with this one).
    """
    position = (torch.arange(length, dtype=torch.float32) + 0.5) / length
    return torch.sin(0.5 * math.pi * ((position - 0.25) * 2).clamp(0, 1)) ** 2


def _to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [-1, 1] (what image_to_tensor does); float passes through."""
    return pixels.float() / 127.5 - 1.0 if pixels.dtype == torch.uint8 else pixels.float()


def _to_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return ((values.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # as tensor_to_image rounds
    return values.to(dtype)


def _downscaled(source: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """[3, H, W] -> [1, 3, h, w] float in [-1, 1] with h * w <= max_pixels, aspect kept (antialiased)."""
    height, width = source.shape[-2:]
    scale = min(1.0, math.sqrt(max(max_pixels, 1) / (height * width)))
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    if size == (height, width):
        return _to_float(source)[None]
    if source.dtype == torch.uint8:
        # Pillow resizes a uint8 image without a float copy of the whole thing.
        image = Image.fromarray(source.permute(1, 2, 0).numpy(), mode="RGB").resize((size[1], size[0]), Image.BICUBIC)
        return image_to_tensor(image)[None]
    return torch.nn.functional.interpolate(_to_float(source)[None], size=size, mode="bilinear", antialias=True)
