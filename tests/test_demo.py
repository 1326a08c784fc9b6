"""The web demo (apps/demo.py): its checkpoint list and model cache, and the running app through gradio_client."""

from __future__ import annotations

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from travel.checkpoint import save_weights
from travel.cli.translate import _demo_module, app as cli_app
from travel.config import GeneratorConfig
from travel.data import resize_shorter
from travel.errors import CheckpointError
from travel.inference import CheckpointInfo
from travel.nets.generator import Generator

MAX_PIXELS = 40_000  # the test app's pixel limit: 200 x 200
MAX_FILE_SIZE = 64 * 1024  # the test app's upload limit, bytes
IMAGE_SIZE = 32  # the tiny checkpoints' training size: "the model's training size" translates at this


def save_tiny_checkpoint(path: Path, *, styles: int = 0, seed: int = 0) -> Path:
    """A tiny generator whose output differs from its input (an untrained one is exactly the identity)."""
    torch.manual_seed(seed)
    generator = Generator(
        GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, num_styles=styles, warp=False)
    )
    with torch.no_grad():
        torch.nn.init.normal_(generator.head.weight, std=0.3)
        generator.head.bias.fill_(0.3)
    summary: dict[str, Any] = {
        "steps": 4, "batch_size": 2, "source_images": 8, "target_images": 9, "date": "2025-01-02T03:04:05+00:00",
        "metrics": {"d_total": 1.25, "g_adv": 0.5},
    }
    if styles:
        summary["style_frequencies"] = [round(1 / styles, 6)] * styles
    save_weights(path, generator, source_domain="red", target_domain="blue", image_size=IMAGE_SIZE, summary=summary)
    return path


def picture(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """A smooth colourful test picture (compresses well, so it stays under the upload limit)."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    channels = [127 + 120 * np.sin(x / (5 + k) + y / (7 - k) + phase + k) for k in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), mode="RGB")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


# ---------------------------------------------------------------------------------------------
# Without a server.


def _info(name: str, path: Path, origin: str = "shipped") -> CheckpointInfo:
    return CheckpointInfo(name, path, origin)


def test_checkpoints_given_come_first_and_shadowed_names_stay_choosable(tmp_path, monkeypatch):
    demo = _demo_module()
    runs = tmp_path / "runs"
    save_tiny_checkpoint(runs / "alpha" / "alpha.safetensors")
    given = tmp_path / "given"
    save_tiny_checkpoint(given / "alpha.safetensors")
    save_tiny_checkpoint(given / "beta.safetensors")
    (runs / "broken").mkdir()
    (runs / "broken" / "broken.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("TRAVEL_RUNS", str(runs))

    catalog, notes = demo.find_checkpoints([given])

    assert list(catalog)[:3] == ["alpha", "beta", "alpha (runs)"]
    assert catalog["alpha"].path == given / "alpha.safetensors"
    assert catalog["alpha (runs)"].path == runs / "alpha" / "alpha.safetensors"
    assert "broken" not in catalog and any(note.startswith("broken") for note in notes)
    assert demo.default_checkpoint(catalog, given=True) == "alpha"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        demo.find_checkpoints([tmp_path / "missing.safetensors"])


def test_the_shipped_default_is_preferred_unless_one_is_given(tmp_path):
    demo = _demo_module()
    catalog = {name: _info(name, tmp_path / f"{name}.safetensors") for name in ("kaishu", demo.DEFAULT_CHECKPOINT, "zebra")}
    assert demo.default_checkpoint(catalog, given=False) == demo.DEFAULT_CHECKPOINT
    assert demo.default_checkpoint(catalog, given=True) == "kaishu"
    without = {k: v for k, v in catalog.items() if k != demo.DEFAULT_CHECKPOINT}
    assert demo.default_checkpoint(without, given=False) == "kaishu"
    assert demo.default_checkpoint({}, given=False) is None


def test_models_are_loaded_once_and_reloaded_when_the_file_changes(tmp_path):
    demo = _demo_module()
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    other = save_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    cache = demo.ModelCache(device="cpu", size=1)

    first = cache.get(path)
    assert cache.get(path) is first
    stat = path.stat()
    save_tiny_checkpoint(path, seed=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a retrained file, even within one clock tick
    assert cache.get(path) is not first
    cache.get(other)
    assert len(cache) == 1  # the least recently used model was dropped


def test_without_any_checkpoint_the_page_says_so(monkeypatch):
    demo = _demo_module()
    monkeypatch.setattr(demo, "list_checkpoints", lambda: [])
    app = demo.build_app(examples=[])
    blocks = {getattr(block, "elem_id", None): block for block in app.blocks.values()}

    assert blocks["notice"].visible and "No checkpoint found" in blocks["notice"].value
    assert blocks["translate"].interactive is False
    with pytest.raises(demo.gr.Error, match="no checkpoint"):
        app.travel_demo.translate({"path": "x.png"}, None, "model", 256, None)


def test_travel_demo_with_a_missing_checkpoint_is_one_error_line(tmp_path):
    result = CliRunner().invoke(cli_app, ["demo", "--ckpt", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "missing.safetensors" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_the_page_translates_at_the_uploads_size_and_refuses_what_the_memory_rule_cannot_fit(tmp_path):
    """By default the page keeps the upload's size (as `travel translate` does), within the same memory rule: a
    budget too small for even tiles is one readable line, not the allocator's message."""
    import gradio as gr

    demo = _demo_module()
    ckpt = save_tiny_checkpoint(tmp_path / "tiny" / "tiny.safetensors")
    catalog, _ = demo.find_checkpoints([ckpt])
    state = demo.DemoState(
        catalog=catalog, default="tiny", cache=demo.ModelCache(device="cpu"), max_pixels=MAX_PIXELS, max_file_size=MAX_FILE_SIZE,
    )
    picture(60, 40).save(tmp_path / "photo.png")
    upload = {"path": str(tmp_path / "photo.png"), "orig_name": "photo.png"}
    (before, after), _, status = state.translate(upload, "tiny", None, 0, None)  # the page's default resolution
    assert before.size == after.size == (60, 40) and "60 × 40" in status

    small = demo.DemoState(
        catalog=catalog, default="tiny", cache=demo.ModelCache(device="cpu", memory_budget=2**16), max_pixels=MAX_PIXELS,
        max_file_size=MAX_FILE_SIZE,
    )
    with pytest.raises(gr.Error) as refused:
        small.translate(upload, "tiny", "full", 0, None)
    assert "60 x 40 is too large for the memory budget of 64 KiB even in tiles" in refused.value.message
    assert "\n" not in refused.value.message


# ---------------------------------------------------------------------------------------------
# The running app, through gradio_client: the same requests the page sends.


@dataclass
class Server:
    url: str
    app: Any
    runs: Path
    folder: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    demo = _demo_module()
    folder = tmp_path_factory.mktemp("demo")
    runs = folder / "runs"
    save_tiny_checkpoint(runs / "tiny" / "tiny.safetensors")
    save_tiny_checkpoint(runs / "styled" / "styled.safetensors", styles=3, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAVEL_RUNS", str(folder / "no-runs"))  # the developer's own runs/ stay out of the test
        app = demo.build_app(checkpoints=[runs], device="cpu", max_pixels=MAX_PIXELS, max_file_size=MAX_FILE_SIZE, concurrency=2)
        demo.launch(app, host="127.0.0.1", port=free_port(), block=False, quiet=True)
        try:
            yield Server(url=app.local_url, app=app, runs=runs, folder=folder)
        finally:
            app.close(verbose=False)


@pytest.fixture(scope="module")
def client(server: Server, tmp_path_factory):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def upload(path: Path) -> Any:
    from gradio_client import handle_file

    return handle_file(str(path))


def test_translation_comes_back_beside_the_original_with_a_download(server, client, tmp_path):
    source = picture(60, 40)
    source.save(tmp_path / "photo.png")

    (before_path, after_path), download, status = client.predict(
        upload(tmp_path / "photo.png"), "tiny", "model", 256, None, api_name="/translate"
    )

    before, after = Image.open(before_path), Image.open(after_path)
    expected = resize_shorter(source, IMAGE_SIZE)  # the model's training size: 60 x 40 -> 48 x 32
    assert before.size == after.size == expected.size == (48, 32)
    assert np.array_equal(np.asarray(before.convert("RGB")), np.asarray(expected))
    assert difference(before.convert("RGB"), after.convert("RGB")) > 5  # a translation, not a copy
    saved = Image.open(download)
    assert Path(download).name == "photo.tiny.png" and saved.format == "PNG"
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(after.convert("RGB")))
    assert "photo.png" in status and "48 × 32" in status


@pytest.mark.parametrize(("resolution", "side", "size"), [("full", 0, (60, 40)), ("custom", 16, (24, 16))])
def test_full_resolution_and_a_chosen_size(server, client, tmp_path, resolution, side, size):
    picture(60, 40).save(tmp_path / "photo.png")
    (_, after_path), _, _ = client.predict(upload(tmp_path / "photo.png"), "tiny", resolution, side, None, api_name="/translate")
    assert Image.open(after_path).size == size


def test_parallel_requests_queue_and_each_gets_its_own_answer(server, client, tmp_path):
    sides = [16, 32, 48, 64, 80, 96]
    for i in range(3):
        picture(40 + 10 * i, 40, seed=i).save(tmp_path / f"photo{i}.png")
    jobs = [
        client.submit(upload(tmp_path / f"photo{i % 3}.png"), "tiny", "custom", side, None, api_name="/translate")
        for i, side in enumerate(sides)
    ]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:  # wait on all at once, each with its own bound
        results = list(pool.map(lambda job: job.result(timeout=120), jobs))

    for i, (side, ((_, after_path), download, status)) in enumerate(zip(sides, results)):
        width, height = 40 + 10 * (i % 3), 40
        expected = resize_shorter(picture(width, height, seed=i % 3), side).size
        assert Image.open(after_path).size == expected
        assert Path(download).name == f"photo{i % 3}.tiny.png" and f"photo{i % 3}.png" in status
    assert len({str(download) for _, download, _ in results}) == len(jobs)  # no two users share a download file


def test_style_option_of_a_self_conditioned_model(server, client, tmp_path):
    from gradio_client.exceptions import AppError

    card, styles, _ = client.predict("styled", api_name="/model_card")
    assert styles["visible"] is True and [value for _, value in styles["choices"]] == [0, 1, 2]
    assert "3 output styles" in card

    picture(48, 48).save(tmp_path / "photo.png")
    outputs = [
        Image.open(client.predict(upload(tmp_path / "photo.png"), "styled", "model", 0, style, api_name="/translate")[0][1])
        for style in (0, 2)
    ]
    assert difference(outputs[0].convert("RGB"), outputs[1].convert("RGB")) > 0.5
    with pytest.raises(AppError, match="style 9 is out of range"):
        client.predict(upload(tmp_path / "photo.png"), "styled", "model", 0, 9, api_name="/translate")

    card, styles, _ = client.predict("tiny", api_name="/model_card")
    assert styles["visible"] is False


def test_model_card_shows_domains_training_and_evaluation(server, client):
    report = {
        "data": "/data/redblue", "settings": {"split": "test"},
        "metrics": {"translation": {"l1": 0.125, "c2st_accuracy": 0.625, "kid": None},
                    "identity": {"l1": 0.25, "c2st_accuracy": 1.0, "kid": None}},
    }
    (server.runs / "tiny" / "tiny.eval-redblue-test.json").write_text(json.dumps(report))

    card, _, resolutions = client.predict("tiny", api_name="/model_card")

    assert "red → blue" in card and "trained at 32 px" in card and "4 steps" in card and "8 source / 9 target" in card
    assert "d\\_total 1.25" in card  # the last logged training metrics
    assert "Evaluation (redblue, test): L1 0.125 (identity 0.25) · C2ST acc 0.625 (identity 1)" in card
    assert "KID" not in card
    assert ["the model's training size (32 px)", "model"] in [list(choice) for choice in resolutions["choices"]]


def test_bad_uploads_get_a_message_and_the_app_keeps_serving(server, client, tmp_path):
    import httpx
    from gradio_client.exceptions import AppError

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(AppError, match="broken.png: not an image file"):
        client.predict(upload(tmp_path / "broken.png"), "tiny", "model", 256, None, api_name="/translate")

    Image.new("RGB", (250, 200), "white").save(tmp_path / "large.png")  # 50,000 pixels, small as a file
    with pytest.raises(AppError, match=r"large.png: 250 × 200 is 0.05 megapixels, more than this demo takes \(0.04\)"):
        client.predict(upload(tmp_path / "large.png"), "tiny", "model", 256, None, api_name="/translate")

    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "heavy.png")  # about 77 KB: above the 64 KB upload limit
    assert (tmp_path / "heavy.png").stat().st_size > MAX_FILE_SIZE
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client reads the app's limit
        client.predict(upload(tmp_path / "heavy.png"), "tiny", "model", 256, None, api_name="/translate")
    with open(tmp_path / "heavy.png", "rb") as handle:  # and the server refuses it too
        refused = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("heavy.png", handle)}, timeout=30)
    assert refused.status_code == 413

    picture(40, 40).save(tmp_path / "fine.png")
    with pytest.raises(AppError, match="no checkpoint named 'nope'"):
        client.predict(upload(tmp_path / "fine.png"), "nope", "model", 256, None, api_name="/translate")
    with pytest.raises(AppError, match="size must be between"):
        client.predict(upload(tmp_path / "fine.png"), "tiny", "custom", 5000, None, api_name="/translate")

    (_, after_path), _, _ = client.predict(upload(tmp_path / "fine.png"), "tiny", "model", 256, None, api_name="/translate")
    assert Image.open(after_path).size == (32, 32)


def test_only_uploaded_files_can_be_translated(server, tmp_path):
    """The handler reads the upload's path itself (preprocess=False); Gradio must still refuse a path nobody uploaded."""
    import httpx

    picture(40, 40).save(tmp_path / "photo.png")

    def last_event(path: str) -> str:
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "tiny", "model", 0, None]}
        started = httpx.post(f"{server.url}gradio_api/call/translate", json=payload, timeout=30)
        assert started.status_code == 200
        with httpx.stream("GET", f"{server.url}gradio_api/call/translate/{started.json()['event_id']}", timeout=60) as events:
            return [line for line in events.iter_lines() if line.startswith("event:")][-1]

    with open(tmp_path / "photo.png", "rb") as handle:
        uploaded = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("photo.png", handle)}, timeout=30).json()
    assert last_event(uploaded[0]) == "event: complete"
    assert last_event(str(tmp_path / "photo.png")) == "event: error"  # readable by the server, but never uploaded
