"""The web demo in a real browser: Debian's Chromium, headless, driven by Playwright, against the app on loopback."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from travel.checkpoint import save_weights
from travel.cli.translate import _demo_module
from travel.config import GeneratorConfig
from travel.nets.generator import Generator

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; CI installs it (.ci/run). Playwright's own download is never used.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots, kept after the run (git-ignored)
MAX_FILE_SIZE = 64 * 1024  # the test app's upload limit, bytes
IMAGE_SIZE = 32  # the tiny checkpoint's training size (the page translates at the upload's own size by default)
TIMEOUT_MS = 30_000  # any one wait in the page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]


def save_tiny_checkpoint(path: Path, *, styles: int = 0) -> Path:
    """A tiny generator whose output differs from its input (an untrained one is exactly the identity)."""
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, num_styles=styles, warp=False)
    )
    with torch.no_grad():
        torch.nn.init.normal_(generator.head.weight, std=0.3)
        generator.head.bias.fill_(0.3)
    summary: dict[str, Any] = {"steps": 4, "batch_size": 2, "source_images": 8, "target_images": 8, "date": "2025-01-02"}
    if styles:
        summary["style_frequencies"] = [0.25, 0.5, 0.25][:styles]
    save_weights(path, generator, source_domain="red", target_domain="blue", image_size=IMAGE_SIZE, summary=summary)
    return path


def picture(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    channels = [127 + 120 * np.sin(x / (5 + k) + y / (7 - k) + k) for k in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), mode="RGB")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    demo = _demo_module()
    folder = tmp_path_factory.mktemp("demo-browser")
    checkpoints = [
        save_tiny_checkpoint(folder / "tiny" / "tiny.safetensors"),
        save_tiny_checkpoint(folder / "styled" / "styled.safetensors", styles=3),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAVEL_RUNS", str(folder / "no-runs"))  # the developer's own runs/ stay out of the test
        app = demo.build_app(checkpoints=checkpoints, device="cpu", max_file_size=MAX_FILE_SIZE)
        demo.launch(app, host="127.0.0.1", port=free_port(), block=False, quiet=True)
        try:
            yield app.local_url
        finally:
            app.close(verbose=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, url) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#translate")
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def fetch_image(page: Any, src: str) -> Image.Image:
    response = page.request.get(src)
    assert response.ok, f"{src}: HTTP {response.status}"
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def wait_for_error(page: Any, text: str) -> str:
    """Wait until an error toast holding `text` is shown and fully faded in; returns its text."""
    toast = page.locator("[data-testid=toast-body]", has_text=text)
    toast.wait_for()
    toast.evaluate(
        "toast => new Promise(done => { const check = () => getComputedStyle(toast).opacity === '1' ? done() : "
        "setTimeout(check, 50); check(); })"
    )
    assert toast.is_visible()
    return toast.inner_text()


def translate_in_page(page: Any) -> tuple[Image.Image, Image.Image, str]:
    """Press Translate; (before, after) as the page shows them, and the status line."""
    page.click("#translate")
    page.get_by_text("Translated", exact=False).wait_for()
    images = page.locator("#result img")
    images.nth(1).wait_for()
    assert images.count() == 2  # the before/after slider holds both
    before, after = (fetch_image(page, images.nth(i).get_attribute("src")) for i in range(2))
    return before, after, page.locator("#status").inner_text()


def test_upload_translate_and_download(page, tmp_path):
    source = picture(60, 40)
    source.save(tmp_path / "photo.png")

    page.set_input_files("#source-image input[type=file]", str(tmp_path / "photo.png"))
    page.locator("#source-image img").wait_for()
    before, after, status = translate_in_page(page)

    assert before.size == after.size == (60, 40)  # the default: the upload's own size, as `travel translate` keeps it
    assert np.array_equal(np.asarray(before), np.asarray(source))
    assert np.abs(np.asarray(after, dtype=np.float32) - np.asarray(before, dtype=np.float32)).mean() > 5
    assert "photo.png" in status and "60 × 40" in status

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == "photo.tiny.png"
    saved = Image.open(download.path())
    assert saved.format == "PNG" and np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(after))
    shot = screenshot(page, "demo-translate.png")
    assert Image.open(shot).size[0] >= 1280


@pytest.mark.parametrize("example", ["smiley.png", "1f431.png"])  # a CC0 drawing; a shipped model's held-out example
def test_a_bundled_example_translates(page, example):
    page.locator(f"#examples img[src*='{example}']").click()
    page.locator("#source-image img").wait_for()
    before, after, status = translate_in_page(page)
    assert before.size == after.size == (128, 128)  # the 128 x 128 example at its own size
    assert example in status


def test_choosing_a_self_conditioned_checkpoint_offers_its_styles(page, tmp_path):
    assert not page.locator("#style").is_visible()  # the opening checkpoint has no styles
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="styled").click()
    page.locator("#style").wait_for(state="visible")
    page.get_by_text("3 output styles", exact=False).wait_for()
    assert page.locator("#style input").input_value() == "style 1 (50% of targets)"  # the most frequent is preselected

    picture(40, 40).save(tmp_path / "photo.png")
    page.set_input_files("#source-image input[type=file]", str(tmp_path / "photo.png"))
    page.locator("#source-image img").wait_for()
    _, after, status = translate_in_page(page)
    assert after.size == (40, 40) and "with styled, style 1" in status
    screenshot(page, "demo-styles.png")


def test_a_corrupt_file_shows_an_error_in_the_page_in_place_of_the_last_result(page, tmp_path):
    picture(40, 40).save(tmp_path / "photo.png")
    page.set_input_files("#source-image input[type=file]", str(tmp_path / "photo.png"))
    page.locator("#source-image img").wait_for()
    translate_in_page(page)  # a first, good result on the page

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    page.set_input_files("#source-image input[type=file]", str(tmp_path / "broken.png"))
    page.click("#translate")
    message = wait_for_error(page, "broken.png")
    title, close, *reason = message.strip().splitlines()  # the toast: its title, its close button, the message
    assert (title, close) == ("Error", "×") and reason == ["broken.png: not an image file Pillow can read"]
    # The previous translation, its caption and its download are gone: the error is not shown above another's result.
    assert page.locator("#result img").count() == 0
    assert "Translated" not in page.locator("#status").inner_text()
    assert not page.locator("#download").is_visible()
    screenshot(page, "demo-corrupt-file.png")


def test_a_file_above_the_size_limit_is_refused_with_a_message(page, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "heavy.png")
    assert (tmp_path / "heavy.png").stat().st_size > MAX_FILE_SIZE
    page.set_input_files("#source-image input[type=file]", str(tmp_path / "heavy.png"))
    assert "exceed the maximum allowed size" in wait_for_error(page, "heavy.png")
    screenshot(page, "demo-too-large.png")

