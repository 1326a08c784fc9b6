"""How much memory translating an image takes, and the one rule that keeps it within a budget.

Every translation, from `travel translate`, `Translator` or the web demo, is planned by `plan_translation`: one pass
over the whole image when its estimate fits the budget, else overlapping tiles of the largest side that fits,
sharing statistics from a whole-image pass downscaled to fit; an image whose buffers alone exceed the budget is
refused before any work. The estimates are computed from the generator's config (channels and positions per
level, the warp, attention) and checked against measured peaks (docs/METHOD.md, "Memory at inference";
tests/test_memory.py runs a translation under an address-space limit set from them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from travel.config import GeneratorConfig
from travel.errors import ConfigError, TravelError
from travel.nets.blocks import EXPLICIT_ATTENTION_PAIRS, context_pooling, key_channels

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes one translation may use: activations, tiles and image buffers together
DEFAULT_OVERLAP = 64  # pixels shared by neighbouring tiles, blended with a cosine ramp
MAX_TILE = 2048  # the largest tile side the rule picks: beyond it, one more tile costs less than its overlap saves
FLOAT = 4  # bytes per activation: inference runs in fp32
# Per pixel of one image, held at once at worst: the decoded image and its prepared copy (PIL, 4 bytes each: RGBX),
# the uint8 array and Pillow's bytes copy behind it (3 + 3), the result (3), its array copy and PIL image (3 + 4),
# Pillow's copy for the statistics pass's downscale (4 + 3) and the PNG encoder's rows: 34, rounded up
# (tests/test_memory.py measures a tiled translation's peak under an address-space limit set from this).
IMAGE_BYTES_PER_PIXEL = 36
# A forward pass holds, besides the network's own tensors, about this many [N, 3, H, W] float tensors at once:
# the input, its padded and NHWC copies, and the residual head's clamp, atanh, sum and tanh (measured, below).
IMAGE_TENSORS = 8
# The rest of a pass at the level it peaks: the upsampled input, the convolution, norm and activation outputs,
# the skip and their concatenation (in units of that level's [N, C, h, w] tensor).
WORKING_TENSORS = 7
# Measured peaks stay below the estimate by this factor or more (tests/test_memory.py, docs/BENCHMARKS.md); the
# margin covers allocator slack and oneDNN's scratch buffers.
MARGIN = 1.25


class MemoryBudgetError(TravelError):
    """An image whose translation cannot fit the memory budget, even in tiles (or with the tiling asked for)."""


def parse_size(text: str | int) -> int:
    """Bytes (at least 1) from '2G', '1.5GB', '512M', '512MiB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"--memory-budget: {text!r} is not a size (examples: 2G, 1.5GB, 512M)")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** "bkmgt".index(unit or "b"))
    if size < 1:
        raise ConfigError(f"--memory-budget must be > 0, got {text!r}")
    return size


def format_bytes(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def forward_bytes(cfg: GeneratorConfig, height: int, width: int, batch: int = 1) -> int:
    """Peak bytes of one no-grad fp32 forward pass of `batch` images of height x width (any sides), margin included.

    At decoder level l the skips of levels 0..l are still held, with that level's working tensors; an attention
    block adds its queries, padded keys and values and output (fused kernel), or its score matrix (small maps).
    """
    m = cfg.multiple
    h, w = -(-height // m) * m, -(-width // m) * m  # padded as the network pads
    unit = [batch * cfg.width(level) * (h >> level) * (w >> level) * FLOAT for level in range(cfg.depth + 1)]
    peak = 0.0
    for level in range(cfg.depth + 1):
        positions = (h >> level) * (w >> level)
        held = sum(unit[:level + 1])
        above = batch * cfg.width(min(level + 1, cfg.depth)) * positions * FLOAT  # the upsampled input at this level
        working = WORKING_TENSORS * unit[level] + above
        if cfg.warp:
            working += unit[level] + batch * positions * 8 * FLOAT  # the warped skip, flow, grid and its resampling
        if level in cfg.attention_levels:
            working = max(working, unit[level] + _attention_bytes(cfg, level, h >> level, w >> level, batch))
        peak = max(peak, held + working)
    peak += IMAGE_TENSORS * batch * cfg.channels * h * w * FLOAT
    return int(MARGIN * peak)


def _attention_bytes(cfg: GeneratorConfig, level: int, h: int, w: int, batch: int) -> int:
    channels = cfg.width(level)
    s = context_pooling(h, w)
    keys = -(-h // s) * -(-w // s)
    if h * w * keys <= EXPLICIT_ATTENTION_PAIRS:
        return batch * (2 * h * w * keys + 4 * h * w * channels) * FLOAT  # scores, weights; q, out and copies
    return batch * 6 * h * w * channels * FLOAT  # q, k padded to C, v, out and the transposed copies


def image_bytes(height: int, width: int, *, tiled: bool = False, tile: int = 0) -> int:
    """The buffers of one image outside the network: decoded, converted, the result; tiling adds its float band."""
    band = 4 * FLOAT * tile * width if tiled else 0  # RGB sums and weights over one row of tiles
    return IMAGE_BYTES_PER_PIXEL * height * width + band


def check_tiling(tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """The tile rounded up to the network's multiple; errors for layouts that cannot blend."""
    if tile < 1:
        raise ConfigError(f"--tile must be >= 1, got {tile}")
    if overlap < 0:
        raise ConfigError(f"--overlap must be >= 0, got {overlap}")
    tile = math.ceil(tile / multiple) * multiple
    largest = _largest_overlap(tile, multiple)
    if overlap > largest:
        raise ConfigError(
            f"--overlap {overlap} is too large for --tile {tile} with this model (multiple of {multiple}): at most {max(largest, 0)}"
        )
    return tile, overlap


def _largest_overlap(tile: int, multiple: int) -> int:
    """The widest overlap a tile can blend: half the tile, leaving an interior beyond the padded edges."""
    return min(tile // 2, tile - 2 * multiple - 1)


def images_per_pass(cfg: GeneratorConfig, height: int, width: int, most: int, budget: int) -> int:
    """How many images of one size share a forward pass within the budget (at least 1: each was planned to fit)."""
    count = max(1, most)
    while count > 1 and forward_bytes(cfg, height, width, count) + count * image_bytes(height, width) > budget:
        count -= 1
    return count


@dataclass(frozen=True)
class Plan:
    """How one image is translated: in one pass (tile 0), or in tiles with statistics from a downscaled pass."""

    height: int
    width: int
    budget: int
    needed: int  # estimated peak bytes of the whole translation
    tile: int = 0
    overlap: int = 0
    stats_pixels: int = 0  # the statistics pass sees the whole image downscaled to at most this many pixels

    @property
    def tiled(self) -> bool:
        return self.tile > 0


def plan_translation(
    cfg: GeneratorConfig,
    height: int,
    width: int,
    *,
    budget: int = DEFAULT_MEMORY_BUDGET,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
) -> Plan:
    """The one rule: one pass if it fits `budget`, else the largest tiles that fit; MemoryBudgetError if nothing does.

    tile=None chooses; tile=0 asks for one pass (refused if it would not fit); tile=N asks for N-pixel tiles.
    """
    if budget < 1:
        raise ConfigError(f"--memory-budget must be > 0, got {budget}")
    size = f"{width} x {height}"
    whole = forward_bytes(cfg, height, width) + image_bytes(height, width)
    if tile == 0 or (tile is None and whole <= budget) or (tile is not None and max(height, width) <= tile):
        if whole > budget:
            raise MemoryBudgetError(
                f"{size} in one pass needs about {format_bytes(whole)}, more than the memory budget of "
                f"{format_bytes(budget)} (raise --memory-budget, or let it tile)"
            )
        return Plan(height, width, budget, whole)
    fixed = image_bytes(height, width)
    if tile is None:
        tile = _largest_tile(cfg, height, width, budget, fixed)
        if tile == 0:
            smallest = _tile_floor(cfg)
            raise MemoryBudgetError(
                f"{size} is too large for the memory budget of {format_bytes(budget)} even in tiles (it needs about "
                f"{format_bytes(fixed + 2 * _tile_bytes(cfg, smallest, height, width))} with {smallest} px tiles); raise "
                "--memory-budget or scale the image down"
            )
        overlap = min(overlap, _largest_overlap(tile, cfg.multiple))  # an overlap the chosen tile can blend
    tile, overlap = check_tiling(tile, overlap, cfg.multiple)  # a layout that cannot blend is refused now, not mid-batch
    tiles = fixed + _tile_bytes(cfg, tile, height, width)
    if tiles > budget:
        raise MemoryBudgetError(
            f"{size} in {tile} px tiles needs about {format_bytes(tiles)}, more than the memory budget of "
            f"{format_bytes(budget)} (use a smaller --tile, or raise --memory-budget)"
        )
    # The statistics pass runs first, but what it freed is not all given back before the tiles run (the allocator
    # keeps some of it), so the tiles and the statistics pass share the room rather than each having all of it.
    stats = _stats_pixels(cfg, height, width, budget - tiles)
    needed = tiles + forward_bytes(cfg, *_scaled(height, width, stats))
    if needed > budget:
        raise MemoryBudgetError(
            f"{size} in {tile} px tiles leaves no room for the whole-image statistics pass within the memory budget of "
            f"{format_bytes(budget)} (use a smaller --tile, or raise --memory-budget)"
        )
    return Plan(height, width, budget, needed, tile=tile, overlap=overlap, stats_pixels=stats)


def _tile_bytes(cfg: GeneratorConfig, tile: int, height: int, width: int) -> int:
    """A tile's pass, the band of rows being blended, and the shared keys, values and norm statistics tiles read."""
    return forward_bytes(cfg, tile, tile) + image_bytes(0, width, tiled=True, tile=tile) + _context_bytes(cfg, height, width)


def _context_bytes(cfg: GeneratorConfig, height: int, width: int) -> int:
    """At most: each attention block's keys and values over the whole image, pooled as SelfAttention pools them."""
    total = 0
    decoder = [level for level in cfg.attention_levels if level < cfg.depth]  # the way up has blocks there too
    for level in list(cfg.attention_levels) + decoder:
        h, w = max(height >> level, 1), max(width >> level, 1)
        s = context_pooling(h, w)
        total += -(-h // s) * -(-w // s) * (key_channels(cfg.width(level)) + cfg.width(level)) * FLOAT
    return total


def _tile_floor(cfg: GeneratorConfig) -> int:
    """The smallest tile worth using (a multiple of the network's): room for an overlap and an interior."""
    return math.ceil(max(4 * cfg.multiple, 64) / cfg.multiple) * cfg.multiple


def _largest_tile(cfg: GeneratorConfig, height: int, width: int, budget: int, fixed: int) -> int:
    """The largest tile side (a multiple of the network's) within half the budget left beside `fixed`; 0 if none."""
    best, side = 0, _tile_floor(cfg)
    while side <= MAX_TILE and side < max(height, width) + cfg.multiple:
        if _tile_bytes(cfg, side, height, width) > (budget - fixed) // 2:  # half the room: the rest is the stats pass's
            break
        best = side
        side += cfg.multiple
    return best


def _scaled(height: int, width: int, pixels: int) -> tuple[int, int]:
    """The size `travel.inference` downscales an image to for at most `pixels` pixels (the aspect kept)."""
    scale = min(1.0, math.sqrt(max(pixels, 1) / (height * width)))
    return max(1, int(height * scale)), max(1, int(width * scale))


def _stats_pixels(cfg: GeneratorConfig, height: int, width: int, room: int) -> int:
    """The most pixels of a downscaled whole-image pass that fit `room` bytes (found by bisection)."""
    low, high = 1, height * width
    while low < high:
        middle = (low + high + 1) // 2
        if forward_bytes(cfg, *_scaled(height, width, middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return low
