"""`travel translate` over thousands of files in one process: memory stays flat, bad files are reported, the rest written."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import travel.data
from travel.checkpoint import save_weights
from travel.cli import app
from travel.config import GeneratorConfig
from travel.nets.generator import Generator

COUNT = 2000  # good images
SIDE = 64  # pixels; big enough that keeping every result would show (see RSS_GROWTH_LIMIT)
SAMPLE_EVERY = 50  # files loaded between two RSS samples
# Holding the results would keep, after the 25% point, 0.75 * COUNT images of SIDE * SIDE pixels at 4 bytes each
# (Pillow stores RGB as 32-bit pixels): 1500 * 16 KiB = 23.4 MiB, and 48 KiB each as [3, H, W] float tensors.
# A loop that writes each result and drops it stays flat (measured over 6000 files: no trend, single samples
# +-5 MiB). Half of the smallest such leak is the limit.
RSS_GROWTH_LIMIT = int(0.75 * COUNT) * SIDE * SIDE * 4 // 2
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # the RSS curve, kept after the run (git-ignored)
TINY = dict(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4)


def rss_bytes() -> int:
    """This process's resident memory now, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` small PNGs, each a different colour with a square in a different place (fast to write)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (SIDE, SIDE), (i % 256, (7 * i) % 256, 255 - i % 256))
        corner = i % (SIDE // 2)
        image.paste((255, 255, 255), (corner, corner, corner + SIDE // 4, corner + SIDE // 4))
        paths.append(folder / f"{i:04d}.png")
        image.save(paths[-1], compress_level=1)
    return paths


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc (Linux)")
def test_thousands_of_files_in_one_process(tmp_path, monkeypatch):
    photos, out = tmp_path / "photos", tmp_path / "out"
    good = write_photos(photos, COUNT)
    # Damaged files spread through the run, each sorting between good ones.
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    corrupt = {
        photos / "0500-truncated.png": good[500].read_bytes()[:60],
        photos / "1000-text.png": b"not a picture at all\n",
        photos / "1250-empty.png": b"",
        photos / "1500-bomb.png": bomb + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""),
    }
    for path, blob in corrupt.items():
        path.write_bytes(blob)
    torch.manual_seed(0)
    ckpt = tmp_path / "models" / "many.safetensors"
    save_weights(ckpt, Generator(GeneratorConfig(**TINY)).eval(), source_domain="a", target_domain="b", image_size=SIDE, summary={})

    # The CLI imports load_image when it runs, so this wrapper sees every file: sample RSS as the run goes.
    samples: list[tuple[int, int]] = []  # (files loaded so far, RSS bytes)
    load_image = travel.data.load_image

    def sampled(*args, **kwargs):
        if len(samples) == 0 or sampled.calls % SAMPLE_EVERY == 0:
            samples.append((sampled.calls, rss_bytes()))
        sampled.calls += 1
        return load_image(*args, **kwargs)

    sampled.calls = 0
    monkeypatch.setattr(travel.data, "load_image", sampled)
    result = CliRunner().invoke(app, ["translate", str(photos), "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"])
    samples.append((sampled.calls, rss_bytes()))

    # A bad file costs its own output only: one error line each, exit 1, every good image written.
    total = COUNT + len(corrupt)
    assert result.exit_code == 1, result.output
    assert sampled.calls == total
    errors = result.stderr.splitlines()
    assert errors[-1] == f"error: {len(corrupt)} of {total} input(s) failed; translated {COUNT}", errors[-5:]
    for path in corrupt:
        assert sum(line.startswith(f"error: {path}: ") for line in errors) == 1, (path, errors)
    expected = [out / f"{path.stem}.many.png" for path in good]
    assert result.stdout.splitlines() == [str(path) for path in expected]
    assert sorted(out.iterdir()) == expected  # nothing for the bad files, no temporary files left behind
    for path in expected:
        with Image.open(path) as written:
            assert written.size == (SIDE, SIDE) and written.mode == "RGB", path

    # Memory: flat from the quarter mark to the end, so it does not scale with the number of files. Single samples
    # swing by a few MiB (a batch's activations come and go), so the growth is read off a least-squares line.
    loaded, rss = zip(*[(n, r) for n, r in samples if n >= total // 4])
    slope = np.polyfit(np.array(loaded, dtype=np.float64), np.array(rss, dtype=np.float64), 1)[0]  # bytes per file
    growth = slope * (loaded[-1] - loaded[0])
    curve = {n: round(r / 2**20, 1) for n, r in samples}
    summary = {"files": total, "fitted_growth_mib": round(growth / 2**20, 2), "limit_mib": round(RSS_GROWTH_LIMIT / 2**20, 1),
               "largest_jump_mib": round((max(rss) - rss[0]) / 2**20, 2), "rss_mib_by_files_loaded": curve}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "translate-many.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"translate-many: {total} files, RSS growth after 25% {growth / 2**20:.2f} MiB (limit {RSS_GROWTH_LIMIT / 2**20:.1f})")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB after the 25% point: {curve}"
