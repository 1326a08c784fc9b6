"""`travel fit` from the command line: tiny runs, one-line errors, warnings that name files, signals and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import travel
from conftest import draw_shapes
from travel.checkpoint import load_state, load_weights
from travel.cli import app
from travel.compat import read_run_config
from travel.config import DataConfig, FitConfig, resolve

# Tiny networks at 16 px on the CPU: a step takes milliseconds.
TINY = ["--size", "16", "--channels", "8", "--depth", "2", "--vec-len", "8", "--batch-size", "2", "--device", "cpu",
        "--log-every", "1", "--sample-every", "1000"]


def invoke(*args: str | Path):
    # typer's CliRunner (click 8.2+) keeps stderr apart: result.stdout, result.stderr; result.output has both.
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a forgotten --run-dir lands in tmp, not in the repository


@pytest.fixture
def folders(tmp_path):
    red, blue = tmp_path / "red", tmp_path / "blue"
    draw_shapes(red, 4, colour=(220, 30, 30), size=24, seed=1)
    draw_shapes(blue, 4, colour=(30, 30, 220), size=24, seed=2)
    return red, blue


def test_tiny_fit(folders, tmp_path):
    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--run-dir", tmp_path / "run", "--steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    assert "done: 2 steps" in result.stdout
    weights = load_weights(tmp_path / "run" / "red2blue.safetensors")
    assert (weights.source_domain, weights.target_domain, weights.image_size) == ("red", "blue", 16)
    config = read_run_config((tmp_path / "run" / "config.json").read_text())
    assert (config.train.steps, config.data.crop_size, config.model.discriminator.vec_len) == (2, 16, 8)


def test_dry_run_prints_the_config_as_json_and_trains_nothing(folders, tmp_path):
    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--steps", "7", "--siamese", "separate", "--dry-run", *TINY)
    assert result.exit_code == 0, result.output
    config = read_run_config(result.stdout)
    assert (config.name, config.train.steps, config.model.siamese) == ("red2blue", 7, "separate")
    assert config.data.source == str(red.resolve()) and config.data.load_size >= config.data.crop_size == 16
    assert not (tmp_path / "runs").exists()


def test_generator_options_reach_the_config(folders):
    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--skip-from", "1", "--no-residual", "--dry-run", *TINY)
    assert result.exit_code == 0, result.output
    generator = read_run_config(result.stdout).model.generator
    assert (generator.skip_from, generator.residual) == (1, False)
    default = read_run_config(invoke("fit", "--src", red, "--dst", blue, "--dry-run", *TINY).stdout)
    assert (default.model.generator.skip_from, default.model.generator.residual) == (0, True)
    assert default.data.flip is True and default.model.generator.warp is True
    flat = invoke("fit", "--src", red, "--dst", blue, "--no-warp", "--dry-run", *TINY)
    assert read_run_config(flat.stdout).model.generator.warp is False
    flipless = invoke("fit", "--src", red, "--dst", blue, "--no-flip", "--dry-run", *TINY)
    assert read_run_config(flipless.stdout).data.flip is False
    assert default.data.augment_colour is True
    plain = invoke("fit", "--src", red, "--dst", blue, "--no-augment-colour", "--dry-run", *TINY)
    assert read_run_config(plain.stdout).data.augment_colour is False
    result = invoke("fit", "--src", red, "--dst", blue, "--skip-from", "9", "--dry-run", *TINY)
    assert result.exit_code != 0 and "--skip-from" in result.output and "Traceback" not in result.output


def test_default_model_is_the_measured_one(folders):
    """16 channels (32 was no better on either benchmark at the same steps, and half as fast); replicate padding
    (zero padding let G paint frames on emoji). The CLI and the Python config agree."""
    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--dry-run")
    assert result.exit_code == 0, result.output
    model = read_run_config(result.stdout).model
    assert model.generator.base_channels == model.discriminator.scratch.base_channels == 16
    assert model.generator.padding == FitConfig().model.generator.padding == "replicate"
    assert FitConfig().model.generator.base_channels == 16
    # --warp: it beat the plain U-Net on both glyph seeds by every score and was neutral on emoji (BENCHMARKS.md);
    # the dataclass default is the same. A config saved without the key (older runs, shipped weights) does not warp
    # (tests/test_compat.py).
    assert model.generator.warp is True and FitConfig().model.generator.warp is True


def test_default_discriminator_is_projected_and_python_builds_the_same(folders):
    """--disc projected is the default since it beat scratch on two glyph seeds and on emoji by every score that
    copying cannot win (docs/BENCHMARKS.md); test_projected checks each family's defaults. The README's Python
    example builds the same training as the command line's defaults."""
    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--dry-run")
    assert result.exit_code == 0, result.output
    default = read_run_config(result.stdout)
    assert default.model.discriminator.family == "projected"
    # The dataclasses' defaults are the command line's: FitConfig() with the domains set resolves to the same config,
    # and so does travel.fit_config (the options travel.fit takes).
    python = resolve(FitConfig(name=default.name, data=DataConfig(source=str(red.resolve()), target=str(blue.resolve()))))
    assert python == default
    assert travel.fit_config(red, blue) == default


def test_python_fit_trains_what_the_command_line_trains(folders, tmp_path):
    """travel.fit with the flags as keywords: the same config and, step for step, the same weights (one process,
    one thread, the same machine and the same computation, so bit for bit)."""
    import hashlib

    red, blue = folders
    result = invoke("fit", "--src", red, "--dst", blue, "--run-dir", tmp_path / "cli", "--steps", "3", *TINY)
    assert result.exit_code == 0, result.output
    python = travel.fit(red, blue, run_dir=tmp_path / "py", steps=3, size=16, channels=8, depth=2, vec_len=8,
                        batch_size=2, device="cpu", log_every=1, sample_every=1000)
    assert python.weights == tmp_path / "py" / "red2blue.safetensors" and python.step == 3
    assert read_run_config((tmp_path / "py" / "config.json").read_text()) == read_run_config((tmp_path / "cli" / "config.json").read_text())

    def digest(path: Path) -> str:
        weights = load_weights(path)
        return hashlib.sha256(b"".join(weights.state[k].numpy().tobytes() for k in sorted(weights.state))).hexdigest()

    assert digest(python.weights) == digest(tmp_path / "cli" / "red2blue.safetensors")
    resumed = travel.resume(tmp_path / "py", steps=4)
    assert resumed.step == 4 and not resumed.interrupted


def test_python_options_are_checked_by_name(folders):
    red, blue = folders
    with pytest.raises(travel.TravelError, match="unknown option 'lr_gg' \\(did you mean 'lr_g'\\?\\)"):
        travel.fit_config(red, blue, lr_gg=1e-3)
    with pytest.raises(travel.TravelError, match="^TrainConfig.batch_size: must be >= 2") as caught:
        travel.fit_config(red, blue, batch_size=1)
    assert caught.value.setting == "TrainConfig.batch_size"
    with pytest.raises(travel.TravelError, match="DataConfig.crop_size: expected an integer"):
        travel.fit_config(red, blue, size="big")


@pytest.mark.parametrize("flag, value, words", [
    ("--batch-size", "1", "error: --batch-size: must be >= 2"),
    ("--channels", "2", "error: --channels: must be >= 4"),
    ("--clusters", "1", "error: --clusters: must be 0 (off) or at least 2"),
    ("--d-resolution", "100", "error: --d-resolution: must be a multiple of 32"),
    ("--padding", "reflect", "error: --padding: 'reflect' is not one of"),
])
def test_config_errors_name_the_flag(folders, flag, value, words):
    red, blue = folders
    line = assert_one_error_line(invoke("fit", "--src", red, "--dst", blue, flag, value, "--dry-run"))
    assert line.startswith(words), line


def test_fit_help_groups_the_flags_and_shows_each_default():
    result = CliRunner().invoke(app, ["fit", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    panels = [text.index(f"─ {group} ") for group in ("Data", "Generator", "Discriminator", "Losses", "Run")]
    assert panels == sorted(panels)  # in this order
    from travel.options import OPTIONS

    for option in OPTIONS.values():
        assert option.flag_name in text, option.flag_name
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    assert "[default: 128]" in rows["--size"] and "[default: 0.0004]" in rows["--lr-d"]
    assert "projected" in rows["--lr-g"] and "scratch" in rows["--lr-g"]  # resolved by the family, and says so


def only_unreadable(tmp_path: Path) -> Path:
    folder = tmp_path / "unreadable"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"")
    return folder


def empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def a_folder_that_is_not_a_run(tmp_path: Path) -> Path:
    (tmp_path / "notarun").mkdir()
    return tmp_path / "notarun"


BAD = {
    "missing-folder": lambda p, r, b: ["--src", p / "nope", "--dst", b],
    "empty-folder": lambda p, r, b: ["--src", empty(p), "--dst", b],
    "only-unreadable-files": lambda p, r, b: ["--src", r, "--dst", only_unreadable(p)],
    "same-folder": lambda p, r, b: ["--src", r, "--dst", r],
    "same-folder-other-spelling": lambda p, r, b: ["--src", r, "--dst", r / ".." / r.name],
    "negative-steps": lambda p, r, b: ["--src", r, "--dst", b, "--steps", "-5"],
    "crop-larger-than-load": lambda p, r, b: ["--src", r, "--dst", b, "--size", "32", "--load-size", "16"],
    "batch-size-1": lambda p, r, b: ["--src", r, "--dst", b, "--batch-size", "1"],
    "unknown-siamese": lambda p, r, b: ["--src", r, "--dst", b, "--siamese", "both"],
    "unknown-device": lambda p, r, b: ["--src", r, "--dst", b, "--device", "tpu"],
    "fp16-on-cpu": lambda p, r, b: ["--src", r, "--dst", b, "--precision", "fp16", "--device", "cpu"],
    "resume-not-a-run": lambda p, r, b: ["--resume", a_folder_that_is_not_a_run(p)],
    "resume-missing": lambda p, r, b: ["--resume", p / "never"],
    "data-without-layout": lambda p, r, b: ["--data", r],
    "no-folders": lambda p, r, b: [],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_error_line(folders, tmp_path, case):
    red, blue = folders
    args = [str(a) for a in BAD[case](tmp_path, red, blue)]
    if not args or args[0] != "--resume":
        # Tiny settings first, so a bad value given by the case wins (typer keeps the last of a repeated option).
        args = [*TINY, "--steps", "2", "--run-dir", str(tmp_path / "run"), *args]
    line = assert_one_error_line(invoke("fit", *args))
    assert len(line) < 300


def test_resume_error_when_the_run_is_already_finished(folders, tmp_path):
    red, blue = folders
    assert invoke("fit", "--src", red, "--dst", blue, "--run-dir", tmp_path / "run", "--steps", "2", *TINY).exit_code == 0
    line = assert_one_error_line(invoke("fit", "--resume", tmp_path / "run"))
    assert "already at step 2" in line and "--steps" in line


def test_resume_with_more_steps_through_the_cli(folders, tmp_path):
    red, blue = folders
    assert invoke("fit", "--src", red, "--dst", blue, "--run-dir", tmp_path / "run", "--steps", "2", *TINY).exit_code == 0
    result = invoke("fit", "--resume", tmp_path / "run", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "done: 3 steps" in result.stdout
    assert load_state(tmp_path / "run")["step"] == 3
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_damaged_files_are_skipped_with_a_warning_naming_each(folders, tmp_path):
    _, blue = folders
    mixed = tmp_path / "a folder with a long name, to test that warnings do not wrap" / "mixed"
    draw_shapes(mixed, 3, colour=(0, 160, 0), size=24)
    good = (mixed / "000.png").read_bytes()
    damaged = {
        "zero bytes.png": b"",
        "truncated[1].png": good[: len(good) // 2],
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
    }
    for name, data in damaged.items():
        (mixed / name).write_bytes(data)
    result = invoke("fit", "--src", mixed, "--dst", blue, "--run-dir", tmp_path / "run", "--steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    assert "skipped 3 unreadable" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    for name in damaged:
        assert any(str(mixed / name) in line for line in warnings), (name, result.stderr)
    assert load_weights(tmp_path / "run" / "mixed2blue.safetensors").image_size == 16


def test_images_smaller_than_the_crop_are_upscaled_with_a_warning(folders, tmp_path):
    _, blue = folders
    small = tmp_path / "small"
    draw_shapes(small, 3, colour=(0, 0, 0), size=10)
    result = invoke("fit", "--src", small, "--dst", blue, "--run-dir", tmp_path / "run", "--steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "upscaled" in line]
    assert len(warning) == 1 and "3 image(s)" in warning[0] and str(small) in warning[0]


def test_cyclegan_layout(tmp_path):
    root = tmp_path / "horse2zebra"
    draw_shapes(root / "trainA", 3, colour=(150, 100, 50), size=24, seed=1)
    draw_shapes(root / "trainB", 3, colour=(0, 0, 0), size=24, seed=2)
    draw_shapes(root / "testA", 1, colour=(150, 100, 50), size=24, seed=3)
    (root / "testB").mkdir()
    result = invoke("fit", "--data", root, "--run-dir", tmp_path / "run", "--steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    weights = load_weights(tmp_path / "run" / "horse2zebra.safetensors")  # named after the dataset, not trainA2trainB
    assert (weights.source_domain, weights.target_domain) == ("horse2zebraA", "horse2zebraB")
    config = read_run_config((tmp_path / "run" / "config.json").read_text())
    assert Path(config.data.source).name == "trainA" and Path(config.data.target).name == "trainB"


# ---------------------------------------------------------------------------------------------
# Signals: a real process, stopped the way a user or a scheduler stops it.


def test_sigterm_and_sigint_save_state_exit_130_and_the_run_resumes(folders, tmp_path):
    # Both signals in one test, their processes side by side: each spends most of its time importing torch.
    red, blue = folders
    package_root = str(Path(travel.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    processes = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        run = tmp_path / signum.name
        command = [sys.executable, "-m", "travel", "fit", "--src", str(red), "--dst", str(blue), "--run-dir", str(run),
                   "--steps", "2000", *TINY]  # far more than it reaches, but finite should the stop fail
        processes[signum] = (run, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        deadline = time.monotonic() + 240
        waiting = dict(processes)
        while waiting:  # signal each process once training has started (its first metrics line)
            for signum, (run, process) in list(waiting.items()):
                assert process.poll() is None, process.communicate()
                metrics = run / "metrics.jsonl"
                if metrics.is_file() and metrics.read_text().strip():
                    process.send_signal(signum)
                    del waiting[signum]
            assert time.monotonic() < deadline, "no metrics line within 240 s"
            time.sleep(0.05)
        outputs = {signum: process.communicate(timeout=120) for signum, (run, process) in processes.items()}
    finally:
        for run, process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()

    for signum, (run, process) in processes.items():
        stdout, stderr = outputs[signum]
        assert process.returncode == 130, (signum.name, stderr)
        assert "Traceback" not in stderr
        assert f"Continue with: travel fit --resume {run}" in stderr
        stopped = load_state(run)["step"]
        assert 1 <= stopped < 2000
        assert f"stopped at step {stopped}" in stderr

        result = invoke("fit", "--resume", run, "--steps", str(stopped + 2))
        assert result.exit_code == 0, result.output
        assert f"done: {stopped + 2} steps" in result.stdout
        assert load_state(run)["step"] == stopped + 2


def test_fit_without_domains_is_refused_before_anything_is_made(tmp_path):
    for extra in ([], ["--dry-run"]):
        line = assert_one_error_line(invoke("fit", *TINY, *extra))
        assert "--src" in line
    assert not (tmp_path / "runs").exists()
    with pytest.raises(travel.TravelError, match="source and target"):
        travel.fit(steps=1)


def test_the_command_line_loads_without_torch():
    """Every `travel` command builds its flags from travel.options when the CLI loads; that table must stay light, so
    `travel --help` (and a typo's error) answers at once (found in review: it had pulled in torch, 2.3 s -> 0.36 s)."""
    code = "import sys, travel.cli; print(sorted(m for m in ('torch', 'PIL', 'travel.data') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
