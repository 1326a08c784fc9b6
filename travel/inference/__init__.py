"""Translation: `Translator` and checkpoint lookup (translator.py), the memory rule that decides one pass or tiles
(memory.py), and the ONNX export (export.py). Needs the generator alone: nothing here imports a discriminator."""

from travel.inference.memory import check_tiling
from travel.inference.translator import (
    DEFAULT_TILE, CheckpointInfo, Translator, available_names, blend_windows, inference_layout, list_checkpoints,
    package_data_dir, resolve_checkpoint, run_generator, runs_dir, shipped_weights_dir, tile_spans,
)

__all__ = [
    "DEFAULT_TILE", "CheckpointInfo", "Translator", "available_names", "blend_windows", "check_tiling", "inference_layout",
    "list_checkpoints", "package_data_dir", "resolve_checkpoint", "run_generator", "runs_dir", "shipped_weights_dir",
    "tile_spans",
]
