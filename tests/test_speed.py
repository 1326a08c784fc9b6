"""`travel bench speed` on tiny configs: it runs, its numbers are positive and agree with each other. No timing checks."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from travel.cli import app
from travel.config import FitConfig
from travel.speed import SpeedSettings, bench_config, format_profile, format_report, run_speed

runner = CliRunner()


@contextmanager
def _restore_threads():
    """--threads sets torch's thread count for the whole process; put it back for the tests that follow."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
# The scratch family for the mechanics: its FLOPs grow with the image (the projected backbone always sees 128 px) and
# it holds no separate S; test_fit_flags_change_what_is_measured compares it with the projected default.
TINY = dict(batch_size=2, steps=1, warmup=0, channels=8, depth=2, vec_len=8, matmul_size=128, disc="scratch")


def _without_attention(config: FitConfig) -> FitConfig:
    """Convolutions only, whose FLOPs grow exactly with the pixel count (attention grows with its square)."""
    model = config.model
    generator = replace(model.generator, attention_levels=())
    discriminator = replace(model.discriminator, attention_level=0)
    return replace(config, model=replace(model, generator=generator, discriminator=discriminator))


def test_bench_config_mirrors_fit_defaults(tmp_path):
    """bench speed with no options times what `travel fit` with no options trains: the same networks and losses."""
    from conftest import draw_shapes
    from travel.config import from_dict

    draw_shapes(tmp_path / "a", 2, colour=(200, 0, 0))
    draw_shapes(tmp_path / "b", 2, colour=(0, 0, 200))
    result = runner.invoke(app, ["fit", "--src", str(tmp_path / "a"), "--dst", str(tmp_path / "b"), "--dry-run"])
    assert result.exit_code == 0, result.output
    fit_config = from_dict(FitConfig, json.loads(result.stdout))
    config = bench_config(SpeedSettings())
    assert config.model == fit_config.model and config.loss == fit_config.loss
    assert config.model.discriminator.family == "projected"
    assert (config.train.batch_size, config.train.lr_g) == (fit_config.train.batch_size, fit_config.train.lr_g)
    assert config.data.crop_size == fit_config.data.crop_size == 128 and config.data.augment
    # A discriminator option times what fit would train with it (here the projected pixel-space branch).
    result = runner.invoke(app, ["fit", "--src", str(tmp_path / "a"), "--dst", str(tmp_path / "b"), "--pixel-weight", "1", "--dry-run"])
    with_pixel = from_dict(FitConfig, json.loads(result.stdout)).model
    assert bench_config(SpeedSettings(pixel_weight=1.0)).model == with_pixel and with_pixel.discriminator.pixel_weight == 1.0


def test_speed_report_is_positive_and_consistent():
    settings = SpeedSettings(size=32, **TINY)
    report = run_speed(settings)
    train, infer = report["train"], report["inference"]
    for value in (train["images_per_s"], train["flops_per_image"], train["peak_memory_mb"], infer["batch_1_ms_per_image"],
                  infer["batch_ms_per_image"], infer["flops_per_image"], infer["peak_memory_mb"]):
        assert value > 0
    assert train["images_per_s"] * train["median_step_ms"] / 1000 == pytest.approx(settings.batch_size)
    assert train["flops_per_step"] == pytest.approx(train["flops_per_image"] * settings.batch_size)
    assert train["achieved_flops_per_s"] == pytest.approx(train["flops_per_step"] / (train["median_step_ms"] / 1000))
    peak = report["matmul_peak"]["float32"]["flops_per_s"]
    assert train["peak_share"] == pytest.approx(train["achieved_flops_per_s"] / peak)
    # A training step runs G forward twice plus backward passes through G and D: several inference passes' worth.
    assert train["flops_per_image"] > 2 * infer["flops_per_image"]
    assert report["parameters"]["generator"] > 0 and report["parameters"]["siamese"] == 0
    text = format_report(report)
    assert "images/s" in text and "ms/image" in text and "matmul peak" in text


def test_flops_grow_four_times_from_32_to_64_pixels():
    reports = {}
    for size in (32, 64):
        settings = SpeedSettings(size=size, **TINY)
        reports[size] = run_speed(settings, config=_without_attention(bench_config(settings)))
    infer_ratio = reports[64]["inference"]["flops_per_image"] / reports[32]["inference"]["flops_per_image"]
    train_ratio = reports[64]["train"]["flops_per_image"] / reports[32]["train"]["flops_per_image"]
    assert infer_ratio == pytest.approx(4.0, rel=1e-6)
    # D's linear head and the spectral-norm power iterations do not grow with the image.
    assert 3.6 < train_ratio <= 4.0 + 1e-6


def test_fit_flags_change_what_is_measured():
    settings = SpeedSettings(size=16, **TINY)
    plain = run_speed(settings)
    rotation = run_speed(replace(settings, rotation=True))  # D also classifies rotated reals and translations
    separate = run_speed(replace(settings, siamese="separate"))
    assert rotation["train"]["flops_per_image"] > plain["train"]["flops_per_image"]
    assert rotation["parameters"]["discriminator"] > plain["parameters"]["discriminator"]
    assert separate["parameters"]["siamese"] == separate["parameters"]["discriminator"] == plain["parameters"]["discriminator"]
    assert rotation["inference"]["flops_per_image"] == separate["inference"]["flops_per_image"] == plain["inference"]["flops_per_image"]
    flat = run_speed(replace(settings, warp=False))  # the default --warp's flow heads: parameters and FLOPs in G alone
    assert plain["parameters"]["generator"] > flat["parameters"]["generator"]
    assert plain["inference"]["flops_per_image"] > flat["inference"]["flops_per_image"]
    assert plain["parameters"]["discriminator"] == flat["parameters"]["discriminator"]
    # --disc projected: the frozen backbone's FLOPs count in training (its forward and the backward to the image), its
    # weights do not count as D's parameters, and the report names the family's defaults it resolved.
    projected = run_speed(replace(settings, disc="projected", vec_len=None))
    assert projected["settings"]["disc"] == "projected" and projected["settings"]["siamese"] == "separate"
    assert projected["settings"]["vec_len"] == 32 and plain["settings"]["vec_len"] == 8  # the family's default, or as given
    assert projected["train"]["flops_per_image"] > 3 * plain["train"]["flops_per_image"]
    assert projected["parameters"]["discriminator"] < 1e6
    assert projected["inference"]["flops_per_image"] == plain["inference"]["flops_per_image"]


def test_bench_speed_command_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    with _restore_threads():
        result = runner.invoke(app, [
        "bench", "speed", "--size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--channels", "8",
            "--depth", "2", "--vec-len", "8", "--matmul-size", "128", "--device", "cpu", "--threads", "1", "--json", str(out),
        ])
    assert torch.get_num_threads() == threads
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["size"] == 32 and report["threads"] == 1 and report["train"]["images_per_s"] > 0
    assert "train FLOPs" in result.stdout


def test_profile_names_where_the_time_goes():
    settings = SpeedSettings(size=16, profile=True, **TINY)
    report = run_speed(settings)
    for phase in ("inference", "train"):
        rows = report["profile"][phase]
        assert rows and all(r["self_ms"] > 0 and r["calls"] >= 1 for r in rows)
        assert sum(r["share"] for r in rows) <= 1.0 + 1e-9
        assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
        assert any("convolution" in r["op"] for r in rows)
    assert any("backward" in r["op"] for r in report["profile"]["train"])  # the training step includes backward
    assert not any("backward" in r["op"] for r in report["profile"]["inference"])
    text = format_profile(report)
    assert "inference: top operators by self time" in text and "train: top operators by self time" in text
    assert "profile" not in run_speed(SpeedSettings(size=16, **TINY))


def test_bench_speed_profile_flag_prints_the_tables():
    with _restore_threads():
        result = runner.invoke(app, [
            "bench", "speed", "--size", "16", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--channels", "8",
            "--depth", "2", "--vec-len", "8", "--matmul-size", "128", "--device", "cpu", "--threads", "1", "--profile",
            "--channels-last",
        ])
    assert result.exit_code == 0, result.output
    assert "train: top operators by self time" in result.stdout and "aten::" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [(["--batch-size", "1"], "batch size"), (["--siamese", "both"], "siamese"), (["--size", "4"], "--size"),
     (["--threads", "0"], "--threads"), (["--precision", "fp16", "--device", "cpu"], "fp16")],
)
def test_bench_speed_errors_are_one_line(args, message):
    result = runner.invoke(app, ["bench", "speed", "--steps", "1", "--warmup", "0", *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and message in result.output
