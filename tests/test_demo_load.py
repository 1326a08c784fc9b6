"""The web demo under concurrent use: parallel gradio_client users against the app in a subprocess (benchmarks/demo_load.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# 50 MB between the last quarter's RSS peak and the first's. Measured on the 2-core machine at 4 x 60 requests of
# 32 px: 0.8 and 2.8 MB (allocator pools and Gradio's sessions settle within the first quarter), so 50 MB leaves room
# for a busier machine. A leak of L per request shows as ~0.75 * 60 * L: 1 MB gives 45 MB (missed), 2 MB gives 90 MB
# (caught). So a leaked model, full-resolution image or per-request buffer of a few MB is caught; a leaked 32 px
# upload (3 KB) is far too small to see, and so is allocator growth that needs large activations (docs/BENCHMARKS.md).
GROWTH_BOUND_MB = 50.0


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("demo_load", ROOT / "benchmarks" / "demo_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


demo_load = _load_benchmark()


def _leaky_app(folder: Path, *, megabytes: int) -> Path:
    """apps/demo.py with a leak planted in its translate handler: every request keeps `megabytes` it never frees."""
    script = folder / "leaky_demo.py"
    script.write_text(
        "import sys\n"
        "from travel.cli.translate import _demo_module\n"
        "demo = _demo_module()\n"
        "kept = []\n"
        "translate = demo.DemoState.translate\n"
        "def leaky(self, *args):\n"
        f"    kept.append(bytearray(b'x') * ({megabytes} << 20))  # written, so resident\n"
        "    return translate(self, *args)\n"
        "demo.DemoState.translate = leaky\n"
        "demo.main(sys.argv[1:])\n"
    )
    return script


@pytest.mark.slow
def test_parallel_clients_all_get_their_answer_and_memory_stays_flat():
    # One upload in ten is damaged (truncated, random bytes, empty, text): each must be refused in one line naming
    # the file, while the other 54 are translated.
    report = demo_load.run_load(clients=4, requests=60, size=32, server_threads=1, timeout_s=240, malformed_every=10)

    assert report["server_exit_status"] is None, "the demo died under load"
    assert report["client_setup_errors"] == []
    assert report["errors"] == {}
    assert (report["sent"], report["answered"], report["failed"], report["lost"]) == (60, 60, 0, 0)
    assert (report["malformed_sent"], report["malformed_refused_in_one_line"]) == (6, 6)
    assert sum(report["refusals"].values()) == 6 and all(words.startswith("FILE: ") for words in report["refusals"])
    memory = report["server_rss_mb"]
    assert report["rss_samples"] > 10 and memory["start"] > 100  # torch + Gradio: the sampler saw the server
    assert len(memory["quarters"]) == 4
    assert memory["growth_last_quarter"] <= GROWTH_BOUND_MB, memory


@pytest.mark.parametrize("kind", range(len(demo_load.MALFORMED_KINDS)))
def test_every_kind_of_damaged_upload_is_one_the_loader_refuses(tmp_path, kind):
    from travel.data import load_image
    from travel.errors import DataError

    path = demo_load.malformed_file(tmp_path / "c00-r0000.png", size=32, seed=kind)
    assert path.name.endswith(demo_load.MALFORMED_KINDS[kind])
    with pytest.raises(DataError):
        load_image(path)


@pytest.mark.slow
def test_the_memory_check_catches_a_leak(tmp_path):
    """The same check against an app that keeps 6 MB per request: ~0.75 * 24 * 6 = 108 MB of growth, so it fails."""
    report = demo_load.run_load(
        clients=2, requests=24, size=32, server_threads=1, timeout_s=240, app=_leaky_app(tmp_path, megabytes=6)
    )

    assert report["answered"] == 24  # the leak costs memory, not answers
    assert report["server_rss_mb"]["growth_last_quarter"] > GROWTH_BOUND_MB, report["server_rss_mb"]
