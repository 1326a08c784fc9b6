"""Image loading and datasets: robust decoding to RGB, the shared [-1, 1] tensor convention, unpaired batches."""

from __future__ import annotations

import hashlib
import random
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from travel.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs); callers may raise it

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half
# What Pillow's decoders raise on damaged bytes: a chunk too short to unpack is a struct.error (PNG gAMA/cHRM/tRNS,
# GIF frame headers); older Pillow lets zlib.error out of PNG text chunks.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError, struct.error, zlib.error,
)


# ---------------------------------------------------------------------------------------------
# One image: decode, orient, convert to RGB. Shared by training, translation and the demo.


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB: EXIF orientation applied, alpha composited onto white.

    `draft` lets JPEG decode at a reduced scale when only a shorter side of about that size is needed.
    Raises DataError with a one-line reason for anything that is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _decode(image, max_pixels=max_pixels, draft=draft, name=str(path))
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image is too large (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read") from None
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None


def image_from_pil(image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The same conversion for an image already opened (the web demo, Python callers)."""
    try:
        return _decode(image, max_pixels=max_pixels, draft=None, name="image")
    except DataError:
        raise
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _decode(image: Image.Image, *, max_pixels: int, draft: int | None, name: str) -> Image.Image:
    width, height = image.size
    if width < 1 or height < 1:
        raise DataError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise DataError(f"{name}: {width}x{height} is above the pixel limit of {max_pixels:,} (raise it to allow)")
    if image.tell() != 0:
        image.seek(0)  # animated: the first frame (n_frames would parse every frame, damaged ones too)
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    image.load()
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block should not cost the user the image
        pass
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float scaled, palette and CMYK converted, alpha onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():  # float TIFFs can hold NaN/inf: NaN black, +inf the brightest finite value
            array = np.nan_to_num(array, nan=0.0, posinf=array[np.isfinite(array)].max(initial=0.0), neginf=0.0)
        top = 1.0 if mode == "F" and array.max(initial=0) <= 1.0 else (65535.0 if array.max(initial=0) > 255 else 255.0)
        if mode.startswith("I;16"):
            top = 65535.0  # known 16-bit: a dark image (all values <= 255) must stay dark, not be read as 8-bit
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float()
    return tensor / 127.5 - 1.0


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """[3, H, W] tensor in [-1, 1] -> RGB PIL image."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected [3, H, W], got {tuple(tensor.shape)}")
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if new == image.size else image.resize(new, Image.BICUBIC)


# ---------------------------------------------------------------------------------------------
# Folders.


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, searched recursively, in a stable order. Hidden files are skipped."""
    folder = Path(folder)
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files)


def resolve_domains(source: str | None, target: str | None, data: str | None) -> tuple[Path, Path]:
    """The two training folders from --src/--dst or a CycleGAN-layout --data folder (trainA/, trainB/)."""
    if data:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        a, b = root / "trainA", root / "trainB"
        if not (a.is_dir() and b.is_dir()):
            raise DataError(f"{root}: expected trainA/ and trainB/ inside (the CycleGAN layout)")
        source, target = source or str(a), target or str(b)
    if not source or not target:
        raise DataError("give both --src and --dst, or --data with trainA/ and trainB/")
    src, dst = Path(source), Path(target)
    for role, folder in (("source", src), ("target", dst)):
        if not folder.exists():
            raise DataError(f"{role} folder {folder} does not exist")
        if not folder.is_dir():
            raise DataError(f"{role} {folder} is not a folder")
    if src.resolve() == dst.resolve():
        raise DataError(f"source and target are the same folder ({src}); give one folder per domain")
    return src, dst


@dataclass(frozen=True)
class ScanReport:
    folder: Path
    usable: int
    skipped: tuple[tuple[str, str], ...]  # (file, reason)
    upscaled: int  # images whose shorter side is below the crop size


class ImageFolder(torch.utils.data.Dataset):
    """One domain's images: scanned once (unreadable files skipped), then loaded, resized and cropped on demand."""

    def __init__(self, folder: str | Path, *, load_size: int, crop_size: int, flip: bool, cache: bool = False) -> None:
        self.folder = Path(folder)
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        candidates = find_images(self.folder)
        if not candidates:
            raise DataError(f"{self.folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.paths: list[Path] = []
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        skipped, upscaled = [], 0
        for path in candidates:
            try:
                image = load_image(path, draft=load_size)
            except DataError as exc:
                skipped.append((str(path), str(exc)))
                continue
            if min(image.size) < crop_size:
                upscaled += 1
            if self._cache is not None:
                self._cache[len(self.paths)] = resize_shorter(image, load_size)
            self.paths.append(path)
        if not self.paths:
            raise DataError(f"{self.folder}: none of the {len(candidates)} image files could be read")
        self.report = ScanReport(self.folder, len(self.paths), tuple(skipped), upscaled)

    def __len__(self) -> int:
        return len(self.paths)

    def resized(self, index: int) -> Image.Image:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        return resize_shorter(load_image(self.paths[index], draft=self.load_size), self.load_size)

    def sample(self, index: int, rng: random.Random) -> torch.Tensor:
        """Random crop (and flip) of image `index`, drawn from `rng`: [3, crop, crop] in [-1, 1]."""
        image = self.resized(index)
        width, height = image.size
        left = rng.randint(0, width - self.crop_size)
        top = rng.randint(0, height - self.crop_size)
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image_to_tensor(image)

    def center(self, index: int) -> torch.Tensor:
        """Deterministic centre crop, for sample grids."""
        image = self.resized(index)
        width, height = image.size
        left, top = (width - self.crop_size) // 2, (height - self.crop_size) // 2
        return image_to_tensor(image.crop((left, top, left + self.crop_size, top + self.crop_size)))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.center(index)


class UnpairedBatches(torch.utils.data.Dataset):
    """Item k is the whole (source, target) batch of training step `start + k`.

    Every random choice (which images, which crop, which flip) is derived from (seed, step, rank), so a
    resumed run sees exactly the batches an uninterrupted one would, whatever the number of workers.
    """

    def __init__(
        self, source: ImageFolder, target: ImageFolder, *, batch_size: int, seed: int, start: int, stop: int, rank: int = 0
    ) -> None:
        self.source, self.target = source, target
        self.batch_size, self.seed, self.start, self.stop, self.rank = batch_size, seed, start, stop, rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source [B, 3, crop, crop], target [B, 3, crop, crop], target image indices [B])."""
        step = self.start + k
        digest = hashlib.sha256(f"{self.seed}:{step}:{self.rank}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "little"))
        source = torch.stack([self.source.sample(rng.randrange(len(self.source)), rng) for _ in range(self.batch_size)])
        target_index = [rng.randrange(len(self.target)) for _ in range(self.batch_size)]
        target = torch.stack([self.target.sample(i, rng) for i in target_index])
        return source, target, torch.tensor(target_index)
