"""The run folder's state: the resume snapshot and its restore, the files a run writes (config, metrics, samples,
weights, clusters) and the signals that stop a run cleanly (docs/METHOD.md, "Files and formats")."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torchvision.utils import make_grid

from travel import __version__
from travel.checkpoint import (
    CLUSTERS_FILE, STATE_FILE, atomic_write_bytes, atomic_write_text, load_run_config, save_state, save_weights, write_error,
)
from travel.compat import dump_run_config
from travel.config import SCHEMA_VERSION, FitConfig, to_json
from travel.data import ImageFolder, tensor_to_image
from travel.errors import CheckpointError, ConfigError
from travel.nets.generator import Generator
from travel.train.distributed import World
from travel.train.step import Nets, Trainer, load_optimizer
from travel.train.styles import Styles, styles_state

def resume_config(run_dir: str | Path, *, steps: int | None = None, workers: int | None = None,
                  compile: bool | None = None, channels_last: bool | None = None) -> FitConfig:
    """The config of an earlier run, optionally with more steps, another number of loader workers, or other
    speed settings (--compile, --channels-last: they change how the step runs, not what it computes)."""
    config = load_run_config(run_dir)
    train, data = config.train, config.data
    if steps is not None:
        train = replace(train, steps=steps)
    if compile is not None:
        train = replace(train, compile=compile)
    if channels_last is not None:
        train = replace(train, channels_last=channels_last)
    if workers is not None:
        data = replace(data, workers=workers)
    return replace(config, train=train, data=data)


def snapshot(nets: Nets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, config: FitConfig, step: int,
             elapsed: float) -> dict[str, Any]:
    state = {
        "format": "travel-state", "schema_version": SCHEMA_VERSION, "travel_version": __version__,
        "config": to_json(config), "step": step, "elapsed": elapsed,
        "generator": nets.generator.state_dict(), "discriminator": nets.discriminator.state_dict(),
        "ema": nets.ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "rng_cpu": torch.get_rng_state(), "rng_python": list(random.getstate()[1]),
    }
    if nets.siamese is not None:
        state["siamese"] = nets.siamese.state_dict()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state

def restore(state: dict[str, Any], nets: Nets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> None:
    try:
        nets.generator.load_state_dict(state["generator"])
        nets.discriminator.load_state_dict(state["discriminator"])
        nets.ema.load_state_dict(state["ema"])
        if nets.siamese is not None:
            nets.siamese.load_state_dict(state["siamese"])
        load_optimizer(opt_g, state["opt_g"])
        load_optimizer(opt_d, state["opt_d"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"resume state does not fit this model ({str(exc).splitlines()[0]})") from None
    torch.set_rng_state(state["rng_cpu"])
    random.setstate((3, tuple(int(x) for x in state["rng_python"]), None))
    if "rng_cuda" in state and torch.cuda.is_available():
        # Per visible GPU; a machine with fewer GPUs than the one that saved keeps the states it has room for.
        for index, rng in enumerate(state["rng_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)

@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT / SIGTERM set an event instead of killing the run, so the loop can save and leave cleanly."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now; saves are atomic, so nothing is torn
        event.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

@torch.no_grad()
def save_samples(run_dir: Path, generator: Generator, fixed: torch.Tensor, step: int, *,
                 styles: Styles | None = None) -> Path:
    """A grid: the fixed source images on top, their translations by the EMA generator below (one row per style)."""
    n = fixed.shape[0]
    if styles is None:
        rows = [generator(fixed)]
    else:
        rows = [generator(fixed, torch.full((n,), k, device=fixed.device)) for k in range(styles.anchors.shape[0])]
    grid = make_grid(torch.cat([fixed, *rows]).float().cpu(), nrow=n, padding=2, pad_value=1.0)
    buffer = io.BytesIO()
    tensor_to_image(grid).save(buffer, format="PNG")
    path = run_dir / "samples" / f"step_{step:07d}.png"
    atomic_write_bytes(path, buffer.getvalue())
    return path

def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line. An append of one short line either lands whole or not at all on local disks."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except OSError as exc:  # a full disk, a folder turned read-only
        raise write_error(path, exc) from None

def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Never train over an earlier run by accident; clear what a killed save left behind."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        return
    for stale in run_dir.glob(".*.tmp"):  # a temporary file of an atomic write that a hard kill interrupted
        stale.unlink(missing_ok=True)
    earlier = [name for name in (STATE_FILE, "metrics.jsonl") if (run_dir / name).exists()]
    if resume or not earlier:
        return
    if not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, pick another --name, or --overwrite to start over"
        )
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run's metrics must not follow the old run's

def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines past `step` (written after the last save by a run that was killed)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))

def domain_name(folder: Path) -> str:
    name = folder.resolve().name
    if name in ("trainA", "trainB", "testA", "testB"):
        return f"{folder.resolve().parent.name}{name[-1]}"
    return name


def take_snapshot(t: Trainer, step: int, elapsed: float, *, lr_scale: float, styles: Styles | None) -> dict[str, Any]:
    """Everything a resume needs at `step`: networks, optimizers, RNG states, the learning-rate scale, the styles."""
    state = snapshot(t.nets, t.opt_g, t.opt_d, t.config, step, elapsed)
    state["lr_scale"] = lr_scale
    if styles is not None and styles.result is not None:  # none before the first clustering
        state["styles"] = styles_state(styles)
    return state


@dataclass
class RunFolder:
    """A run's folder and what its saves record beside the networks. Rank 0 alone writes (under torchrun)."""

    path: Path
    config: FitConfig
    world: World
    device: torch.device
    source: ImageFolder
    target: ImageFolder

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def weights(self) -> Path:
        return self.path / f"{self.config.name}.safetensors"

    def open(self, *, resumed_at: int | None) -> None:
        """Make the folder (or, resuming, drop metrics lines logged after the saved step: they are replayed) and
        write config.json."""
        if not self.world.is_main:
            return
        if resumed_at is not None:
            truncate_metrics(self.metrics, resumed_at)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.json", dump_run_config(self.config) + "\n")

    def truncate(self, step: int) -> None:
        if self.world.is_main:
            truncate_metrics(self.metrics, step)

    def log(self, record: dict[str, Any]) -> None:
        if self.world.is_main:
            append_jsonl(self.metrics, record)

    def save(self, state: dict[str, Any], ema: Generator, *, logged: dict[str, float], styles: Styles | None) -> None:
        """Write the resume state, the EMA generator's weights with a summary, and a self-conditioned run's clusters."""
        if not self.world.is_main:
            return
        config, tc, step = self.config, self.config.train, state["step"]
        save_state(self.path, state)
        summary = {
            "steps": step, "batch_size": tc.batch_size, "images_seen": step * tc.batch_size * self.world.size,
            "train_seconds": round(state["elapsed"], 1), "device": str(self.device), "siamese": config.model.siamese,
            "discriminator": config.model.discriminator.family,
            "source_images": len(self.source), "target_images": len(self.target),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "metrics": logged,
        }
        if self.world.size > 1:
            summary["processes"] = self.world.size  # batch_size is per process
        if styles is not None:
            summary["style_frequencies"] = [round(float(f), 6) for f in styles.frequencies]
        save_weights(
            self.weights, ema, source_domain=domain_name(self.source.folder), target_domain=domain_name(self.target.folder),
            image_size=self.config.data.crop_size, summary=summary,
        )
        if "styles" in state:  # which real target is in which cluster, readable without torch (and by travel eval)
            saved = state["styles"]
            record = {"features": config.clusters.features, "step": step,
                      "frequencies": [round(float(f), 6) for f in saved["frequencies"]],
                      "images": {p.relative_to(self.target.folder).as_posix(): int(k)
                                 for p, k in zip(self.target.paths, saved["labels"])}}
            atomic_write_text(self.path / CLUSTERS_FILE, json.dumps(record, indent=1) + "\n")
