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
from travel.lab.speed import SpeedSettings, format_profile, format_report, run_speed
from travel.options import fit_config

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
TINY = dict(batch_size=2, channels=8, depth=2, vec_len=8, disc="scratch")
QUICK = SpeedSettings(steps=1, warmup=0, matmul_size=128)


def speed(size: int, *, settings: SpeedSettings = QUICK, **options):
    """bench speed of the model `travel fit` would train from these options (TINY's unless overridden)."""
    return run_speed(fit_config(name="bench", size=size, **{**TINY, **options}), settings)


def _without_attention(config: FitConfig) -> FitConfig:
    """Convolutions only, whose FLOPs grow exactly with the pixel count (attention grows with its square)."""
    model = config.model
    generator = replace(model.generator, attention_levels=())
    discriminator = replace(model.discriminator, scratch=replace(model.discriminator.scratch, attention_level=0))
    return replace(config, model=replace(model, generator=generator, discriminator=discriminator))


def test_bench_config_mirrors_fit_defaults(tmp_path):
    """bench speed with no options times what `travel fit` with no options trains: the same networks and losses."""
    from conftest import draw_shapes
    from travel.compat import read_run_config

    draw_shapes(tmp_path / "a", 2, colour=(200, 0, 0))
    draw_shapes(tmp_path / "b", 2, colour=(0, 0, 200))
    result = runner.invoke(app, ["fit", "--src", str(tmp_path / "a"), "--dst", str(tmp_path / "b"), "--dry-run"])
    assert result.exit_code == 0, result.output
    fitted = read_run_config(result.stdout)
    config = fit_config(name="bench")  # what `travel bench speed` with no options measures
    assert config.model == fitted.model and config.loss == fitted.loss and config.train.lr_g == fitted.train.lr_g
    assert config.model.discriminator.family == "projected"
    assert config.train.batch_size == fitted.train.batch_size and config.data.crop_size == fitted.data.crop_size == 128
    assert config.data.augment
    # A discriminator option times what fit would train with it (here the projected pixel-space branch).
    result = runner.invoke(app, ["fit", "--src", str(tmp_path / "a"), "--dst", str(tmp_path / "b"), "--pixel-weight", "1", "--dry-run"])
    with_pixel = read_run_config(result.stdout).model
    assert fit_config(name="bench", pixel_weight=1.0).model == with_pixel and with_pixel.discriminator.projected.pixel_weight == 1.0


def test_speed_report_is_positive_and_consistent():
    report = speed(32)
    train, infer = report["train"], report["inference"]
    for value in (train["images_per_s"], train["flops_per_image"], train["peak_memory_mb"], infer["batch_1_ms_per_image"],
                  infer["batch_ms_per_image"], infer["flops_per_image"], infer["peak_memory_mb"]):
        assert value > 0
    assert train["images_per_s"] * train["median_step_ms"] / 1000 == pytest.approx(TINY["batch_size"])
    assert train["flops_per_step"] == pytest.approx(train["flops_per_image"] * TINY["batch_size"])
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
        reports[size] = run_speed(_without_attention(fit_config(name="bench", size=size, **TINY)), QUICK)
    infer_ratio = reports[64]["inference"]["flops_per_image"] / reports[32]["inference"]["flops_per_image"]
    train_ratio = reports[64]["train"]["flops_per_image"] / reports[32]["train"]["flops_per_image"]
    assert infer_ratio == pytest.approx(4.0, rel=1e-6)
    # D's linear head and the spectral-norm power iterations do not grow with the image.
    assert 3.6 < train_ratio <= 4.0 + 1e-6


def test_fit_flags_change_what_is_measured():
    plain = speed(16)
    rotation = speed(16, rotation=True)  # D also classifies rotated reals and translations
    separate = speed(16, siamese="separate")
    assert rotation["train"]["flops_per_image"] > plain["train"]["flops_per_image"]
    assert rotation["parameters"]["discriminator"] > plain["parameters"]["discriminator"]
    assert separate["parameters"]["siamese"] == separate["parameters"]["discriminator"] == plain["parameters"]["discriminator"]
    assert rotation["inference"]["flops_per_image"] == separate["inference"]["flops_per_image"] == plain["inference"]["flops_per_image"]
    flat = speed(16, warp=False)  # the default --warp's flow heads: parameters and FLOPs in G alone
    assert plain["parameters"]["generator"] > flat["parameters"]["generator"]
    assert plain["inference"]["flops_per_image"] > flat["inference"]["flops_per_image"]
    assert plain["parameters"]["discriminator"] == flat["parameters"]["discriminator"]
    # --disc projected: the frozen backbone's FLOPs count in training (its forward and the backward to the image), its
    # weights do not count as D's parameters, and the report names the family's defaults it resolved.
    projected = speed(16, disc="projected", vec_len=None)
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
    report = speed(16, settings=replace(QUICK, profile=True))
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
    assert "profile" not in speed(16)


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
    [(["--batch-size", "1"], "--batch-size"), (["--siamese", "both"], "siamese"), (["--size", "4"], "--size"),
     (["--threads", "0"], "--threads"), (["--precision", "fp16", "--device", "cpu"], "fp16")],
)
def test_bench_speed_errors_are_one_line(args, message):
    result = runner.invoke(app, ["bench", "speed", "--steps", "1", "--warmup", "0", *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and message in result.output


def test_bench_speed_takes_every_option_that_shapes_the_step():
    """SpeedSettings once lacked half of fit's model flags; now bench speed's come from the same table."""
    from travel.options import BENCH_OPTIONS, OPTIONS

    shaping = {name for name, option in OPTIONS.items() if option.group in ("Generator", "Discriminator")}
    shaping |= {"rotation", "clusters", "travel_weight", "r1", "batch_size", "lr_g", "lr_d", "d_steps", "precision",
                "channels_last", "compile", "augment", "augment_colour", "size"}
    assert shaping <= set(BENCH_OPTIONS)
    result = runner.invoke(app, ["bench", "speed", "--help"], env={"COLUMNS": "200"})
    for name in shaping:
        assert OPTIONS[name].flag_name in result.output, name
