"""`travel translate`, `travel models` and Translator: checkpoints by name, any size, tiles without seams, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import travel.inference.translator as inference
from conftest import draw_shapes, tiny_fit_config
from travel.checkpoint import save_weights
from travel.cli import app
from travel.config import GeneratorConfig
from travel.data import DEFAULT_MAX_PIXELS
from travel.errors import CheckpointError, ConfigError
from travel.inference import Translator, blend_windows, check_tiling, tile_spans
from travel.nets.blocks import SelfAttention
from travel.nets.generator import Generator

REPO = Path(__file__).resolve().parent.parent
TINY = dict(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4)  # multiple of 4


def random_generator(*, seed: int = 0, gate: float = 0.5, **overrides) -> Generator:
    """A tiny generator that changes its input: random head (a residual one starts as the identity), attention on."""
    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig(**{**TINY, **overrides})).eval()
    generator.head.reset_parameters()
    for module in generator.modules():
        if isinstance(module, SelfAttention):
            module.gate.data.fill_(gate)
    return generator


def save(generator: Generator, path: Path) -> Path:
    summary = {"steps": 7, "date": "2026-01-02T03:04:05+00:00"}
    save_weights(path, generator, source_domain="red", target_domain="blue", image_size=16, summary=summary)
    return path


def invoke(*args: str | Path):
    # click 8.2+ keeps stderr apart: result.stdout, result.stderr; result.output has both.
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def stray_files(folder: Path) -> list[Path]:
    """Temporary files an interrupted or failed write would leave behind."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Runs in tmp with its own runs/ and no shipped weights, so nothing in the repository is found or written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAVEL_RUNS", str(tmp_path / "runs"))
    empty = tmp_path / "no-shipped-weights"
    empty.mkdir()
    monkeypatch.setattr(inference, "shipped_weights_dir", lambda: empty)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save(random_generator(), tmp_path / "models" / "red2blue.safetensors")


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    return draw_shapes(tmp_path / "photos", 3, colour=(200, 40, 40), size=24, seed=3)


def test_translator_call_keeps_the_size_for_any_shape(ckpt):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    for width, height in ((1, 1), (3, 5), (17, 33), (33, 17), (24, 24)):
        image = Image.effect_noise((width, height), 60).convert("RGB")
        result = translator(image)
        assert result.mode == "RGB" and result.size == (width, height)
    assert translator(Image.new("RGB", (30, 20)), size=10).size == (15, 10)  # --size: the shorter side


def test_call_matches_the_generator_on_the_shared_preprocessing(ckpt):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    image = Image.effect_noise((21, 13), 50).convert("RGB")
    source = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
    with torch.no_grad():
        expected = translator.generator(source[None])[0]
    result = torch.from_numpy(np.asarray(translator(image)).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert (result - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6  # rounding to 8 bits only


def test_translator_runs_nhwc_and_computes_what_the_nchw_generator_does(ckpt):
    from travel.checkpoint import load_weights

    translator = Translator.from_pretrained(ckpt, device="cpu")
    convolutions = [m.weight for m in translator.generator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    plain = load_weights(ckpt).build().eval()  # NCHW, as trained
    source = torch.rand(3, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        expected = plain(source)
    assert torch.allclose(translator.translate_tensor(source), expected, atol=1e-5)


def test_translate_batch_equals_one_by_one(ckpt):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    images = [Image.effect_noise(size, 40 + i).convert("RGB") for i, size in enumerate([(20, 12), (9, 9), (20, 12), (20, 12)])]
    batched = translator.translate_batch(images, batch_size=2)
    for image, result in zip(images, batched):
        # Not bit-exact: oneDNN picks other kernels for a batch of 2 than for 1 (and per CPU and thread count), so the
        # floats differ in their last bits, and a pixel whose value lands on a rounding boundary of the uint8
        # conversion can move by one level (seen on an AMD EPYC with one thread). More than one level would be a bug.
        a, b = np.asarray(result).astype(int), np.asarray(translator(image)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


# ---------------------------------------------------------------------------------------------
# Checkpoints by name, path and run folder; the shipped weights as package data.


def test_fit_checkpoint_loads_by_name_path_and_run_folder(domains, tmp_path):
    from travel.train import fit

    result = fit(tiny_fit_config(*domains, steps=2), tmp_path / "runs" / "tiny")
    image = Image.open(sorted(domains[0].iterdir())[0])
    outputs = []
    for reference in ("tiny", result.weights, tmp_path / "runs" / "tiny"):
        translator = Translator.from_pretrained(reference, device="cpu")
        assert translator.name == "tiny"
        outputs.append(np.asarray(translator(image)))
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])
    cli = invoke("translate", domains[0] / "000.png", "--ckpt", "tiny", "--device", "cpu")
    assert cli.exit_code == 0, cli.output
    written = domains[0] / "000.tiny.png"
    assert cli.stdout.strip() == str(written)
    assert np.array_equal(np.asarray(Image.open(written)), np.asarray(Translator.from_pretrained("tiny", device="cpu")(Image.open(domains[0] / "000.png"))))


def test_unknown_name_lists_the_available_ones(tmp_path, monkeypatch):
    save(random_generator(), tmp_path / "runs" / "mine" / "mine.safetensors")
    shipped = tmp_path / "shipped"
    save(random_generator(seed=1), shipped / "horse2zebra.safetensors")
    monkeypatch.setattr(inference, "shipped_weights_dir", lambda: shipped)
    with pytest.raises(CheckpointError, match=r"no checkpoint named 'nope' \(available: horse2zebra, mine\)"):
        inference.resolve_checkpoint("nope")
    assert inference.resolve_checkpoint("horse2zebra") == shipped / "horse2zebra.safetensors"
    assert inference.resolve_checkpoint("mine") == tmp_path / "runs" / "mine" / "mine.safetensors"
    line = assert_one_error_line(invoke("translate", "x.png", "--ckpt", "nope"))
    assert "horse2zebra, mine" in line


def test_a_run_shadows_a_shipped_checkpoint_of_the_same_name(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    save(random_generator(seed=1), shipped / "same.safetensors")
    save(random_generator(seed=2), tmp_path / "runs" / "same" / "same.safetensors")
    monkeypatch.setattr(inference, "shipped_weights_dir", lambda: shipped)
    assert inference.resolve_checkpoint("same") == tmp_path / "runs" / "same" / "same.safetensors"
    listing = invoke("models")
    assert listing.exit_code == 0 and "hidden by the run of the same name" in listing.stdout


def test_models_lists_domains_size_and_date(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    save(random_generator(), shipped / "apple2orange.safetensors")
    (shipped / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    monkeypatch.setattr(inference, "shipped_weights_dir", lambda: shipped)
    result = invoke("models")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("apple2orange"))
    assert "red -> blue" in line and " 16 " in line and "2026-01-02" in line and "shipped" in line
    assert "unusable" in next(line for line in result.stdout.splitlines() if line.startswith("broken"))
    records = [json.loads(line) for line in invoke("models", "--json").stdout.splitlines()]
    assert {r["name"]: r["image_size"] for r in records} == {"apple2orange": 16, "broken": 0}


def test_models_with_nothing_to_list():
    result = invoke("models")
    assert result.exit_code == 0 and "travel fit" in result.stdout


def test_the_shipped_weights_folder_is_the_package_data(monkeypatch):
    monkeypatch.undo()  # the real shipped_weights_dir, not the empty one the other tests use
    folder = inference.shipped_weights_dir()
    assert folder.is_dir() and (folder / "__init__.py").is_file()
    assert folder.resolve() == (REPO / "weights").resolve()  # a source checkout or an editable install
    if importlib.util.find_spec("travel.weights") is not None:  # installed: the import system resolves it too
        from importlib.resources import files

        assert Path(str(files("travel.weights"))).resolve() == folder.resolve()


@pytest.mark.slow
def test_weights_ship_in_the_wheel_and_are_found_from_another_folder(tmp_path):
    """Build a wheel from a copy of the project with one checkpoint in weights/, unpack it as pip would
    install it, and look the checkpoint up by name from an unrelated working directory."""
    pytest.importorskip("setuptools")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "travel", project / "travel", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "weights", project / "weights", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copytree(REPO / "apps", project / "apps", ignore=shutil.ignore_patterns("__pycache__"))  # travel.apps
    shutil.copytree(REPO / "examples", project / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.*.png"))
    save(random_generator(), project / "weights" / "packaged.safetensors")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(project)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("travel-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert "travel/weights/packaged.safetensors" in names and "travel/weights/__init__.py" in names
    assert "travel/apps/demo.py" in names and any(n.startswith("travel/apps/examples/") and n.endswith(".png") for n in names)
    assert {"travel/examples/emoji/1f431.png", "travel/examples/glyphs/4e5d.png"} <= names  # the demo's first examples
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import travel.inference as i, importlib.resources as r, pathlib;"
        "print(pathlib.Path(str(r.files('travel.weights'))).resolve());"
        "print(i.resolve_checkpoint('packaged').resolve());"
        "print(i.Translator.from_pretrained('packaged', device='cpu').weights.target_domain);"
        "import travel.apps.demo as d; print(sum(p.is_file() for p in (d.shipped_examples_dir() / n for n in d.SHIPPED_EXAMPLES)))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "TRAVEL_RUNS": str(elsewhere / "runs")}
    found = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    folder, path, target, examples = found.stdout.split()
    installed = (tmp_path / "site" / "travel" / "weights").resolve()
    assert Path(folder) == installed and Path(path) == installed / "packaged.safetensors" and target == "blue"
    assert examples == "4"  # the demo finds every shipped example from the installed package


# ---------------------------------------------------------------------------------------------
# Tiles: layout, agreement with the untiled pass, and seams.


def test_tile_layout_covers_on_the_grid_with_the_overlap():
    for length, tile, overlap, multiple in ((100, 32, 12, 4), (4000, 512, 64, 16), (517, 64, 16, 16), (33, 16, 4, 4)):
        tile, overlap = check_tiling(tile, overlap, multiple)
        spans = tile_spans(length, tile, overlap, multiple)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % multiple == 0 and stop - start <= tile for start, stop in spans)
        assert all(a[1] - b[0] >= overlap and b[0] > a[0] for a, b in zip(spans, spans[1:]))
        total = torch.zeros(length)
        for (start, stop), weight in zip(spans, blend_windows(spans)):
            total[start:stop] += weight
        assert torch.allclose(total, torch.ones(length), atol=1e-5)  # a partition of unity: no seam from weights
    assert tile_spans(30, 32, 8, 4) == [(0, 30)]
    with pytest.raises(ConfigError, match="--overlap"):
        check_tiling(32, 20, 4)
    with pytest.raises(ConfigError, match="--tile"):
        check_tiling(0, 0, 4)


def textured(height: int, width: int) -> torch.Tensor:
    """[3, H, W] in [-1, 1]: smooth colour waves plus fine noise, so that both large and small features matter."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([torch.sin(7 * xx + 3 * yy), torch.cos(6 * yy - 2 * xx), torch.sin(11 * xx * yy)]) * 0.8
    return (image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)


def overlap_bands(spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    band = torch.zeros(length, dtype=torch.bool)
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        band[start:stop] = True
    return band


def seam_excess(output: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> float:
    """The largest extra jump between neighbouring pixel lines inside the tile overlaps, over what the untiled
    translation has between the same lines, relative to its mean jump. A seam shows up as such a jump."""
    def jumps(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        across_cols = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(0, 1))  # [W-1]
        across_rows = (image[:, 1:] - image[:, :-1]).abs().mean(dim=(0, 2))  # [H-1]
        return across_cols, across_rows

    (out_c, out_r), (ref_c, ref_r) = jumps(output), jumps(reference)
    in_cols, in_rows = cols[1:] & cols[:-1], rows[1:] & rows[:-1]
    excess = [(out_c - ref_c)[in_cols] / ref_c.mean(), (out_r - ref_r)[in_rows] / ref_r.mean()]
    return max(float(e.max()) for e in excess if e.numel())


def naive_tiles(translator: Translator, image: torch.Tensor, rows, cols) -> torch.Tensor:
    """What peer tools do: each tile on its own statistics, pasted with hard cuts in the middle of each overlap."""
    def cuts(spans, length):
        return [0] + [(stop + start) // 2 for (_, stop), (start, _) in zip(spans, spans[1:])] + [length]

    row_cuts, col_cuts = cuts(rows, image.shape[1]), cuts(cols, image.shape[2])
    output = torch.zeros_like(image)
    for i, (top, bottom) in enumerate(rows):
        for j, (left, right) in enumerate(cols):
            tile = translator.translate_tensor(image[None, :, top:bottom, left:right])[0]
            r0, r1, c0, c1 = row_cuts[i], row_cuts[i + 1], col_cuts[j], col_cuts[j + 1]
            output[:, r0:r1, c0:c1] = tile[:, r0 - top:r1 - top, c0 - left:c1 - left]
    return output


def test_tiles_agree_with_the_untiled_pass_and_leave_no_seam():
    translator = Translator(load_weights_of(random_generator(gate=0.5)), device="cpu")
    height, width, tile, overlap = 96, 128, 64, 24
    image = textured(height, width)
    untiled = translator.translate_tensor(image[None])[0]
    rows, cols = tile_spans(height, tile, overlap, 4), tile_spans(width, tile, overlap, 4)
    assert len(rows) > 1 and len(cols) > 2
    in_rows, in_cols = overlap_bands(rows, height), overlap_bands(cols, width)
    seams = in_rows[:, None] | in_cols[None, :]

    # The whole image fits the statistics budget: tiles get its exact statistics and attention keys.
    tiled = translator.translate_tiled(image, tile=tile, overlap=overlap, stats_pixels=height * width)
    error = (tiled - untiled).abs().mean(0)  # [H, W]
    assert error[~seams].max() < 1e-4  # away from the overlaps, the very same numbers
    assert error[seams].mean() < 0.01
    ours = seam_excess(tiled, untiled, in_rows, in_cols)
    naive = seam_excess(naive_tiles(translator, image, rows, cols), untiled, in_rows, in_cols)
    assert ours < 0.1 < 0.3 < naive  # measured: 0.02 against 0.58

    # Statistics from a quarter-size copy (the path for images above the budget): an overall shift, no seam.
    downscaled = translator.translate_tiled(image, tile=tile, overlap=overlap, stats_pixels=height * width // 4)
    assert seam_excess(downscaled, untiled, in_rows, in_cols) < naive / 2  # measured: 0.15
    assert (downscaled - untiled).abs().mean() < (naive_tiles(translator, image, rows, cols) - untiled).abs().mean()


def load_weights_of(generator: Generator):
    from travel.checkpoint import Weights

    return Weights(config=generator.cfg, state=generator.state_dict(), metadata={})


def test_tiled_uint8_and_odd_sizes(ckpt):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    for height, width in ((37, 53), (70, 17), (16, 16)):
        pixels = (torch.rand(3, height, width) * 255).to(torch.uint8)
        tiled = translator.translate_tiled(pixels, tile=16, overlap=4)
        assert tiled.dtype == torch.uint8 and tiled.shape == (3, height, width)
    for module in translator.generator.modules():  # the shared statistics are gone afterwards
        assert getattr(module, "fixed_stats", None) is None and getattr(module, "context", None) is None


def test_tiling_turns_on_when_one_pass_would_not_fit_the_memory_budget(ckpt, monkeypatch):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    calls = []
    original = translator.translate_tiled
    monkeypatch.setattr(translator, "translate_tiled", lambda *a, **k: calls.append(k) or original(*a, **k))
    image = Image.effect_noise((200, 150), 50).convert("RGB")
    whole = translator.plan(200, 150)
    assert not whole.tiled  # the default budget takes it in one pass
    budget = whole.needed - 1  # one byte short of that
    plan = translator.plan(200, 150, memory_budget=budget)
    assert plan.tiled and plan.needed <= budget and 0 < plan.stats_pixels < 200 * 150
    assert translator(image, memory_budget=budget).size == (200, 150)
    assert len(calls) == 1 and calls[0]["tile"] == plan.tile and calls[0]["stats_pixels"] == plan.stats_pixels
    translator(image)  # within the default budget: one pass
    translator(image, tile=0, memory_budget=whole.needed)  # tile=0: one pass only
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# The command line: many inputs, outputs, and every kind of bad input.


def test_translate_files_folders_and_globs(ckpt, tmp_path):
    album = tmp_path / "album"
    draw_shapes(album, 2, colour=(10, 200, 10), size=20, seed=4)
    draw_shapes(album / "sub", 1, colour=(10, 10, 200), size=28, seed=5)
    for i, path in enumerate(draw_shapes(tmp_path / "singles", 2, colour=(200, 200, 10), size=18, seed=6)):
        path.rename(path.with_name(f"single{i}.png"))
    result = invoke("translate", album, str(tmp_path / "singles" / "*.png"), "--ckpt", ckpt, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    expected = {
        tmp_path / "out" / "000.red2blue.png", tmp_path / "out" / "001.red2blue.png",
        tmp_path / "out" / "sub" / "000.red2blue.png", tmp_path / "out" / "single0.red2blue.png",
        tmp_path / "out" / "single1.red2blue.png",
    }
    assert set(map(Path, result.stdout.split())) == expected and all(p.is_file() for p in expected)
    assert Image.open(tmp_path / "out" / "sub" / "000.red2blue.png").size == (28, 28)
    twin = draw_shapes(tmp_path / "elsewhere", 1, colour=(0, 0, 0), size=16)[0]  # also named 000.png
    clash = invoke("translate", album, twin, "--ckpt", ckpt, "--out", tmp_path / "out")
    assert "would both be written" in assert_one_error_line(clash)
    # Beside the inputs by default; a second run skips the first run's outputs inside folders.
    assert invoke("translate", album, "--ckpt", ckpt, "--device", "cpu").exit_code == 0
    again = invoke("translate", album, "--ckpt", ckpt, "--device", "cpu")
    assert again.exit_code == 0 and len(again.stdout.split()) == 3
    assert not list(album.rglob("*.red2blue.red2blue.png")) and not stray_files(tmp_path)


def test_bad_inputs_are_reported_and_skipped(ckpt, photos, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image\n")
    good_png = photos[0].read_bytes()
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    jpeg = tmp_path / "ok.jpg"
    Image.effect_noise((32, 32), 60).convert("RGB").save(jpeg, quality=90)
    data = bytearray(jpeg.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00" * 64  # scan data hit in the middle
    data = data[: int(len(data) * 0.7)]
    (bad / "corrupt.jpg").write_bytes(bytes(data))
    bomb = bad / "bomb.png"
    bomb.write_bytes(png_header_claiming(40_000, 40_000))
    inputs = [photos[0], bad / "empty.png", bad / "text.jpg", bad / "truncated.png", bad / "corrupt.jpg", bomb,
              tmp_path / "missing.png", photos[1]]
    result = invoke("translate", *inputs, "--ckpt", ckpt, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name in ("empty.png", "text.jpg", "truncated.png", "corrupt.jpg", "bomb.png", "missing.png"):
        assert sum(name in line for line in errors) == 1, (name, result.stderr)
    assert "6 of 8 input(s) failed" in errors[-1]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["000.red2blue.png", "001.red2blue.png"] and not stray_files(tmp_path / "out")


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_is_the_users_to_raise(ckpt, photos, tmp_path):
    refused = invoke("translate", photos[0], "--ckpt", ckpt, "--max-pixels", "100", "--out", tmp_path / "out")
    assert "above the pixel limit of 100" in assert_one_error_line(refused, code=1)
    assert not (tmp_path / "out").exists()
    allowed = invoke("translate", photos[0], "--ckpt", ckpt, "--max-pixels", "576", "--out", tmp_path / "out", "--device", "cpu")
    assert allowed.exit_code == 0, allowed.output
    assert DEFAULT_MAX_PIXELS == 100_000_000  # the CLI's default says the same number


@pytest.mark.parametrize("problem", ["missing", "not-travel", "truncated", "schema", "run-without-weights"])
def test_bad_checkpoints_give_one_line(problem, ckpt, photos, tmp_path):
    path = tmp_path / f"{problem}.safetensors"
    if problem == "not-travel":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    elif problem == "truncated":
        path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif problem == "schema":
        from safetensors.torch import load_file, safe_open, save_file

        with safe_open(str(ckpt), "pt") as handle:
            metadata = dict(handle.metadata())
        save_file(load_file(str(ckpt)), str(path), metadata={**metadata, "schema_version": "999"})
    elif problem == "run-without-weights":
        path = tmp_path / "runs" / "early"
        path.mkdir(parents=True)
        (path / "state.pt").write_bytes(b"")
    line = assert_one_error_line(invoke("translate", photos[0], "--ckpt", path, "--out", tmp_path / "out"))
    expected = {"missing": "no such checkpoint", "not-travel": "not a travel checkpoint", "truncated": "truncated",
                "schema": "schema version '999'", "run-without-weights": "not saved its weights"}[problem]
    assert expected in line
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_an_input(ckpt, photos, tmp_path):
    victim = photos[0].with_name(f"{photos[0].stem}.red2blue.png")
    shutil.copy(photos[1], victim)
    before = victim.read_bytes()
    line = assert_one_error_line(invoke("translate", photos[0], victim, "--ckpt", ckpt))
    assert "refusing to overwrite" in line and victim.read_bytes() == before
    assert not (photos[0].parent / f"{victim.stem}.red2blue.png").exists()  # nothing was translated


@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "--size must be >= 1"),
    (["--tile", "16", "--overlap", "15"], "--overlap 15 is too large"),
    (["--style", "3"], "style 3 is out of range"),
    (["--out", "FILE"], "is a file"),
])
def test_usage_errors(ckpt, photos, tmp_path, args, message):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    assert message in assert_one_error_line(invoke("translate", photos[0], "--ckpt", ckpt, *args))


def test_nothing_to_translate(ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images in this folder" in assert_one_error_line(invoke("translate", tmp_path / "empty", "--ckpt", ckpt), code=1)


# ---------------------------------------------------------------------------------------------
# Colour modes and orientation: each gives what its plain RGB, upright equivalent gives.


def rgb_equivalents() -> list[tuple[str, Image.Image, Image.Image]]:
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8), "RGB")
    grey = colour.convert("L")
    rgba = colour.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (18, 26), dtype=np.uint8), "L"))
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    deep = Image.fromarray((np.asarray(grey, dtype=np.uint16) * 257).astype(np.uint16)).convert("I;16")
    palette = colour.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    cmyk = colour.convert("CMYK")
    return [
        ("greyscale", grey, grey.convert("RGB")),
        ("alpha", rgba, on_white),
        ("16-bit", deep, grey.convert("RGB")),
        ("palette", palette, palette.convert("RGB")),
        ("cmyk", cmyk, cmyk.convert("RGB")),
    ]


def test_colour_modes_and_exif_orientation(ckpt, tmp_path):
    translator = Translator.from_pretrained(ckpt, device="cpu")
    for name, image, plain in rgb_equivalents():
        result = translator(image)
        assert result.mode == "RGB" and result.size == plain.size, name
        assert np.array_equal(np.asarray(result), np.asarray(translator(plain))), name
    quadrants = np.zeros((20, 12, 3), dtype=np.uint8)  # four flat colours: they survive JPEG, and any turn shows
    quadrants[:10, :6], quadrants[:10, 6:], quadrants[10:, :6], quadrants[10:, 6:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 250)
    upright = Image.fromarray(quadrants, "RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif, quality=100)
    result = invoke("translate", path, "--ckpt", ckpt, "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = np.asarray(Image.open(tmp_path / "sideways.red2blue.png"), dtype=np.float64)
    assert output.shape == (20, 12, 3)  # upright, not the stored 12 x 20
    right = np.abs(output - np.asarray(translator(upright))).mean()
    turned = np.abs(output - np.asarray(translator(upright.transpose(Image.Transpose.ROTATE_180)))).mean()
    assert right * 4 < turned, (right, turned)
    for mode_name, image, _ in rgb_equivalents():
        image.save(tmp_path / f"{mode_name}.png" if mode_name != "cmyk" else tmp_path / f"{mode_name}.tif")
    batch = invoke("translate", *(p for p in tmp_path.iterdir() if p.suffix in (".png", ".tif") and "red2blue" not in p.name),
                   "--ckpt", ckpt, "--device", "cpu")
    assert batch.exit_code == 0, batch.output
    assert all(Image.open(Path(p)).mode == "RGB" for p in batch.stdout.split())
