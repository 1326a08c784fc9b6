"""Shared fixtures: tiny generated image folders and tiny model configs, so every test runs in seconds on a CPU."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

# One thread: these tensors are tiny, so a second thread buys little, and where cores are shared its
# synchronisation makes CPU tests 10-50x slower (measured: 30 discriminator passes 0.2 s vs 2-9 s).
torch.set_num_threads(1)
# Tests run offline: no usage pings from gradio or gradio_client (read when they are imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # kept after the run (git-ignored)


def report_artifact(request, filename: str, summary: dict, line: str) -> None:
    """Keep a test module's counts in test-artifacts/FILENAME and print `line` past pytest's capture (a module
    fixture's teardown output is captured otherwise)."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / filename).write_text(json.dumps(summary, indent=2) + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")


def draw_shapes(
    folder: Path, count: int, *, colour: tuple[int, int, int], size: int = 40, seed: int = 0,
    background: tuple[int, int, int] = (255, 255, 255),
) -> list[Path]:
    """`count` PNGs of one filled circle or square in `colour` on `background`; same seed, same shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = random.Random(seed * 1000 + i)
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        extent = rng.randint(size // 4, size // 2)
        x, y = rng.randint(2, size - extent - 2), rng.randint(2, size - extent - 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + extent, y + extent], fill=colour)
        path = folder / f"{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def domains(tmp_path: Path) -> tuple[Path, Path]:
    """Two small folders: red shapes (source) and blue shapes (target)."""
    source, target = tmp_path / "red", tmp_path / "blue"
    draw_shapes(source, 8, colour=(220, 30, 30), seed=1)
    draw_shapes(target, 8, colour=(30, 30, 220), seed=2)
    return source, target


def stripe_ink(source: Path, out: Path) -> None:
    """The picture at `source` with every other pair of rows of dark ink turned white, saved at `out`: the same
    shape in a second style (striped against flat)."""
    import numpy as np

    pixels = np.asarray(Image.open(source).convert("RGB")).copy()
    rows = (np.arange(pixels.shape[0]) // 2 % 2 == 1)[:, None]
    pixels[(pixels.mean(axis=2) < 128) & rows] = 255
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(out)


def styled_fit_config(source: Path, target: Path, *, clusters: int, subset: int, steps: int, name: str = "styled"):
    """A tiny self-conditioned FitConfig (32 px, scratch D) that clusters the frozen backbone's style statistics."""
    from travel.config import (
        ClusterConfig, DataConfig, DiscriminatorConfig, ProjectedConfig, ScratchConfig, FitConfig, GeneratorConfig, ModelConfig, TrainConfig,
    )

    return FitConfig(
        name=name,
        model=ModelConfig(
            generator=GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, num_styles=clusters, warp=False),
            discriminator=DiscriminatorConfig(family="scratch", vec_len=8, scratch=ScratchConfig(base_channels=8, max_channels=16, depth=2, attention_level=1)),
        ),
        clusters=ClusterConfig(clusters=clusters, recluster_every=1, subset=subset, features="backbone"),
        data=DataConfig(source=str(source), target=str(target), load_size=32, crop_size=32),
        train=TrainConfig(steps=steps, batch_size=2, log_every=1, sample_every=100, save_every=1),
    )


def tiny_fit_config(source: Path, target: Path, **train_overrides):
    """A FitConfig small enough for a test: 8-channel nets at 16x16 crops."""
    from travel.config import (
        DataConfig, DiscriminatorConfig, FitConfig, GeneratorConfig, ModelConfig, ScratchConfig, TrainConfig,
    )

    train = dict(steps=4, batch_size=2, log_every=1, sample_every=2, save_every=2, sample_count=2, seed=0)
    train.update(train_overrides)
    return FitConfig(
        name="tiny",
        model=ModelConfig(
            generator=GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, warp=False),
            discriminator=DiscriminatorConfig(family="scratch", vec_len=8, scratch=ScratchConfig(base_channels=8, max_channels=16, depth=2, attention_level=1)),
        ),
        data=DataConfig(source=str(source), target=str(target), load_size=18, crop_size=16),
        train=TrainConfig(**train),
    )


@pytest.fixture
def tiny_config(domains):
    return tiny_fit_config(*domains)
