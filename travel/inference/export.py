"""ONNX export of a released generator: any batch, height and width, checked against PyTorch in onnxruntime."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from travel import __version__
from travel.checkpoint import Weights, atomic_path
from travel.errors import TravelError
from travel.nets.generator import Generator

DEFAULT_OPSET = 18
CHECK_SIZES = ((1, 45, 61), (2, 64, 48), (1, 3, 2))  # (batch, height, width): odd sides, even sides, tiny
MAX_ABS_DIFF = 1e-3


class ExportError(TravelError):
    """The export could not be written, or the written model does not match PyTorch."""


class OnnxGenerator(nn.Module):
    """The generator with its padding written without Python branches on the size, so one graph fits every size.

    Generator.forward decides reflect-or-replicate padding in Python, which an exporter freezes at the example's
    size. Here the same choice (reflect when the padding is smaller than the side, else replicate, as
    models.pad_to_multiple does) is made with tensor ops on gather indices, and the padded image goes to
    Generator.forward_padded, which is what forward runs too.
    """

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        self.multiple = generator.cfg.multiple
        self.styled = generator.cfg.num_styles > 0

    def forward(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """source: [N, C, H, W] in [-1, 1]; style: [N] int64 (models with styles). Returns [N, C, H, W]."""
        height, width = source.shape[-2], source.shape[-1]
        rows, rows_reflect = _padded_indices(height, self.multiple, source.device)
        cols, cols_reflect = _padded_indices(width, self.multiple, source.device)
        reflect = rows_reflect & cols_reflect  # pad_to_multiple falls back to replicate on both sides at once
        rows = torch.where(reflect, rows[0], rows[1])
        cols = torch.where(reflect, cols[0], cols[1])
        padded = source.index_select(2, rows).index_select(3, cols)  # [N, C, H', W'], multiples of 2**depth
        translated = self.generator.forward_padded(padded, style if self.styled else None)
        # Cropped by gathering, not slicing: a slice end makes torch.export guard on how it compares to the side.
        keep_rows = torch.arange(height, device=source.device)
        keep_cols = torch.arange(width, device=source.device)
        return translated.index_select(2, keep_rows).index_select(3, keep_cols)


def _padded_indices(length: torch.SymInt | int, multiple: int, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Source index of every padded position, for reflect and for replicate, and whether reflect is possible."""
    # Written as multiple * ceil(length / multiple) so torch.export can see the padded side divides evenly.
    positions = torch.arange(((length + multiple - 1) // multiple) * multiple, device=device)
    last = length - 1
    reflected = torch.where(positions <= last, positions, 2 * last - positions)
    replicated = positions.clamp(max=last)
    return (reflected, replicated), reflected.min() >= 0


@dataclass(frozen=True)
class ExportReport:
    path: Path
    opset: int
    checked: tuple[tuple[tuple[int, ...], float], ...]  # (input shape, max abs difference to PyTorch)


def export_onnx(weights: Weights, path: str | Path, *, opset: int = DEFAULT_OPSET, check: bool = True) -> ExportReport:
    """Write the generator as ONNX with dynamic batch, height and width; with `check`, compare it to PyTorch.

    The file appears only once it is complete and (with `check`) matches PyTorch within MAX_ABS_DIFF.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx onnxscript onnxruntime") from None
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(f"{path}: the ONNX file name should end in .onnx")
    generator = weights.build().float().eval()
    module = OnnxGenerator(generator).eval()
    model = onnx.load_from_string(_export_bytes(module, generator, opset=opset))
    metadata = {
        "travel_version": __version__,
        "source_domain": weights.source_domain,
        "target_domain": weights.target_domain,
        "image_size": str(weights.image_size),
        "input": "source: float32 [N, 3, H, W] RGB in [-1, 1] (pixel / 127.5 - 1)"
        + ("; style: int64 [N]" if module.styled else ""),
        "output": "translation: float32 [N, 3, H, W] in [-1, 1]",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    checked: list[tuple[tuple[int, ...], float]] = []
    if check:
        checked = check_onnx(data, module, channels=generator.cfg.channels)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return ExportReport(path=path, opset=opset, checked=tuple(checked))


def _export_bytes(module: OnnxGenerator, generator: Generator, *, opset: int) -> bytes:
    """Export with torch.export (the dynamo exporter), with batch, height and width symbolic."""
    # Sides from multiple + 1 up: at or below the multiple the bottleneck is 1 x 1, which torch.export treats
    # as a broadcasting special case. The graph still runs those sizes in onnxruntime (CHECK_SIZES has one).
    smallest = generator.cfg.multiple + 1
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=smallest, max=65536)
    width = torch.export.Dim("width", min=smallest, max=65536)
    example = torch.rand(2, generator.cfg.channels, 3 * generator.cfg.multiple + 3, 2 * generator.cfg.multiple + 1) * 2 - 1
    args: tuple[torch.Tensor, ...] = (example,)
    dynamic: dict[str, dict[int, torch.export.Dim] | None] = {"source": {0: batch_dim, 2: height, 3: width}}
    input_names = ["source"]
    if module.styled:
        args = (example, torch.zeros(2, dtype=torch.long))
        dynamic["style"] = {0: batch_dim}
        input_names.append("style")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # torch.export first, so a model that cannot be captured with symbolic sizes fails loudly here
            # instead of falling back to a graph frozen at the example's size.
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
            onnx_program = torch.onnx.export(
                program, dynamo=True, input_names=input_names, output_names=["translation"], opset_version=opset,
                verbose=False, optimize=True,
            )
        except Exception as exc:  # the exporters raise many types; one line is what the user can act on
            raise ExportError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:300]}") from None
    if onnx_program is None:
        raise ExportError("torch.onnx.export returned no program")
    onnx_program.save(buffer)
    return buffer.getvalue()


def check_onnx(data: bytes, module: OnnxGenerator, *, channels: int = 3) -> list[tuple[tuple[int, ...], float]]:
    """Run the exported model in onnxruntime at CHECK_SIZES and compare with PyTorch; raise if they differ."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking the export needs onnxruntime (pip install onnxruntime), or pass --no-check") from None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    results = []
    for batch, height, width in CHECK_SIZES:
        source = torch.rand(batch, channels, height, width, generator=generator) * 2 - 1
        feeds = {"source": source.numpy()}
        style = None
        if module.styled:
            style = torch.arange(batch) % module.generator.cfg.num_styles
            feeds["style"] = style.numpy()
        (translated,) = session.run(["translation"], feeds)
        with torch.no_grad():
            expected = module.generator(source, style)
        if translated.shape != tuple(expected.shape):
            raise ExportError(f"exported model gives shape {translated.shape} for {tuple(source.shape)}")
        diff = float((torch.from_numpy(translated) - expected).abs().max())
        if not diff < MAX_ABS_DIFF:
            raise ExportError(f"exported model differs from PyTorch by {diff:.2e} at {tuple(source.shape)}")
        results.append((tuple(source.shape), diff))
    return results
