"""The Python API: `travel.fit` trains what `travel fit` trains, from the same options; `travel.resume` continues a
run. Both are thin: the options table is travel.options, the loop travel.train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from travel.errors import DataError
from travel.options import fit_config
from travel.train import FitResult
from travel.train import fit as train
from travel.train import resume_config
from travel.train.loop import AbortFn, MessageFn, ProgressFn


def fit(
    source: str | Path | None = None, target: str | Path | None = None, *, data: str | Path | None = None,
    name: str | None = None, run_dir: str | Path | None = None, overwrite: bool = False,
    progress_fn: ProgressFn | None = None, abort_fn: AbortFn | None = None, message_fn: MessageFn | None = None,
    **options: Any,
) -> FitResult:
    """Train a translator from the images in `source` to those in `target` (or a CycleGAN-layout `data` folder), as
    `travel fit --src SOURCE --dst TARGET` does: the same model and defaults, any `travel fit` option as a keyword in
    snake_case (steps=2000, size=64, lr_g=1e-4, warp=False). Writes runs/NAME/ (or `run_dir`); returns where the
    weights are. Hooks as travel.train.fit."""
    if source is None and target is None and data is None:
        raise DataError("give the source and target folders (or a CycleGAN-layout data folder)")
    config = fit_config(source, target, data=data, name=name, **options)
    return train(config, run_dir, overwrite=overwrite, progress_fn=progress_fn, abort_fn=abort_fn,
                          message_fn=message_fn)


def resume(
    run_dir: str | Path, *, steps: int | None = None, workers: int | None = None, compile: bool | None = None,
    channels_last: bool | None = None, progress_fn: ProgressFn | None = None, abort_fn: AbortFn | None = None,
    message_fn: MessageFn | None = None,
) -> FitResult:
    """Continue the run in `run_dir` exactly where it stopped, up to `steps` (default: its own)."""
    config = resume_config(run_dir, steps=steps, workers=workers, compile=compile, channels_last=channels_last)
    return train(config, run_dir, resume=True, progress_fn=progress_fn, abort_fn=abort_fn, message_fn=message_fn)


__all__ = ["FitResult", "fit", "fit_config", "resume"]
