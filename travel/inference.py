"""Inference: find a checkpoint by name or path, and translate images with one call."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from travel.checkpoint import Weights, load_weights
from travel.data import DEFAULT_MAX_PIXELS, image_from_pil, image_to_tensor, resize_shorter, tensor_to_image
from travel.errors import CheckpointError
from travel.runtime import resolve_device


def shipped_weights_dir() -> Path:
    """The released weights: package data `travel.weights`, or the repo's weights/ in a source checkout."""
    try:
        from importlib.resources import files

        folder = Path(str(files("travel.weights")))
        if folder.is_dir():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def runs_dir() -> Path:
    return Path(os.environ.get("TRAVEL_RUNS", "runs"))


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A .safetensors file, a run folder, or a name among the shipped weights and the user's runs/."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".safetensors" or candidate.is_file():
        if not candidate.is_file():
            raise CheckpointError(f"{candidate}: no such checkpoint file")
        return candidate
    if candidate.is_dir():
        preferred = candidate / f"{candidate.name}.safetensors"
        if preferred.is_file():
            return preferred
        found = sorted(candidate.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise CheckpointError(f"{candidate}: no single .safetensors file in this folder")
    name = str(name_or_path)
    for path in (shipped_weights_dir() / f"{name}.safetensors", runs_dir() / name / f"{name}.safetensors"):
        if path.is_file():
            return path
    available = ", ".join(available_names()) or "none"
    raise CheckpointError(f"no checkpoint named {name!r} (available: {available})")


def available_names() -> list[str]:
    names = {p.stem for p in shipped_weights_dir().glob("*.safetensors")}
    if runs_dir().is_dir():
        names |= {p.parent.name for p in runs_dir().glob("*/*.safetensors") if p.stem == p.parent.name}
    return sorted(names)


class Translator:
    """A trained translator: `translator(image)` returns the translated PIL image at the input's size."""

    def __init__(self, weights: Weights, *, device: str | torch.device = "auto", name: str = "") -> None:
        self.weights = weights
        self.name = name
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.generator = weights.build().to(self.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device = "auto") -> "Translator":
        path = resolve_checkpoint(name_or_path)
        return cls(load_weights(path), device=device, name=path.stem)

    @torch.no_grad()
    def translate_tensor(self, source: torch.Tensor, *, style: int | None = None) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1]; any H and W."""
        style_ids = None
        if style is not None:
            if not 0 <= style < max(self.weights.config.num_styles, 1):
                raise CheckpointError(f"style {style} is out of range for this model")
            style_ids = torch.full((source.shape[0],), style, dtype=torch.long, device=self.device)
        return self.generator(source.to(self.device, torch.float32), style_ids).float().cpu()

    def __call__(self, image: Image.Image, *, size: int | None = None, style: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        image = image_from_pil(image, max_pixels=max_pixels)
        if size:
            image = resize_shorter(image, size)
        return tensor_to_image(self.translate_tensor(image_to_tensor(image)[None], style=style)[0])

    def translate_batch(self, images: list[Image.Image], **kwargs) -> list[Image.Image]:
        return [self(image, **kwargs) for image in images]
