"""The Gradio web demo: upload an image, pick a checkpoint, get the translation beside it and download it."""

from __future__ import annotations

import argparse
import ctypes
import html
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import gradio as gr
from PIL import Image

from travel import DEFAULT_CHECKPOINT  # the shipped checkpoint the page opens with; else the first one found
from travel.data import load_image
from travel.errors import CheckpointError, ConfigError, DataError, TravelError
from travel.inference import (
    CheckpointInfo, Translator, list_checkpoints, package_data_dir, resolve_checkpoint, runs_dir, shipped_weights_dir,
)
from travel.inference.memory import DEFAULT_MEMORY_BUDGET

DEFAULT_HOST = "127.0.0.1"  # loopback: the demo is reachable from this machine only unless --host says otherwise
DEFAULT_MAX_FILE_SIZE = 20 * 1024 * 1024  # bytes per upload; larger files are refused before they are stored
DEFAULT_MAX_PIXELS = 25_000_000  # width x height of an upload; larger images are refused before they are decoded
DEFAULT_CONCURRENCY = 2  # translations run at once; more requests wait in the queue
DEFAULT_QUEUE_SIZE = 64  # requests that may wait; beyond that the page says the queue is full
DEFAULT_CACHED_MODELS = 3  # loaded checkpoints kept in memory, least recently used dropped first
CUSTOM_SIZES = (16, 2048)  # range of the "size of my choice" slider (shorter side, pixels)
OUTPUT_MAX_AGE_S = 3600  # downloads older than this are deleted (Gradio keeps its own copy for the page)
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# The shipped models' own held-out examples (the repository's examples/, Twemoji and AR PL UMing; licences in
# examples/README.md), offered first so the page shows what each model does at a glance; then our CC0 drawings.
SHIPPED_EXAMPLES = ("emoji/1f431.png", "emoji/1f437.png", "glyphs/4e5d.png", "glyphs/4fdd.png")


def shipped_examples_dir() -> Path:
    """The repository's examples/: package data `travel.examples` once installed (any install), else the checkout's."""
    return package_data_dir("travel.examples", "examples")


RESOLUTIONS = {  # value (what API clients send) -> label shown in the page; the first is the default
    "full": "the size of my image (tiled when large)",
    "model": "the model's training size",
    "custom": "a size of my choice",
}
DEFAULT_RESOLUTION = "full"  # as `travel translate`: the output has the upload's size, within the memory rule

ORIGINS = {"runs": "your runs", "shipped": "shipped with travel", "given": "given to the demo"}  # CheckpointInfo.origin, in words

log = logging.getLogger("travel.demo")


# ---------------------------------------------------------------------------------------------
# Which checkpoints the demo offers, and the loaded models.


def find_checkpoints(extra: Sequence[str | Path] = ()) -> tuple[dict[str, CheckpointInfo], list[str]]:
    """(dropdown key -> checkpoint, notes on the unusable ones). `extra` comes first, then runs/, then shipped weights.

    `extra` holds names, .safetensors files, run folders, or folders of either; a bad one is a CheckpointError.
    A name found twice (a run shadowing a shipped checkpoint) gets its origin appended, so both stay choosable.
    """
    listed = list_checkpoints()
    known = {info.path.resolve(): info for info in listed}
    ordered: list[CheckpointInfo] = []
    for item in extra:
        for path in _expand(item):
            ordered.append(known.get(path.resolve(), CheckpointInfo(path.stem, path, "given")))
    ordered += listed
    catalog: dict[str, CheckpointInfo] = {}
    seen: set[Path] = set()
    notes: list[str] = []
    for info in ordered:
        if info.path.resolve() in seen:
            continue
        seen.add(info.path.resolve())
        if info.problem:
            notes.append(f"{info.name} ({info.path}): {info.problem}")
            continue
        key = next(k for k in (info.name, f"{info.name} ({info.origin})", str(info.path)) if k not in catalog)
        catalog[key] = info
    return catalog, notes


def default_checkpoint(catalog: dict[str, CheckpointInfo], *, given: bool) -> str | None:
    """The checkpoint the page opens with: the first one given, else DEFAULT_CHECKPOINT, else the first found."""
    if given or DEFAULT_CHECKPOINT not in catalog:
        return next(iter(catalog), None)
    return DEFAULT_CHECKPOINT


def _expand(item: str | Path) -> list[Path]:
    """The checkpoint files one --ckpt argument names: a folder of several (or of run folders) gives all of them."""
    folder = Path(item)
    if folder.is_dir():
        direct = sorted(folder.glob("*.safetensors"))
        if len(direct) > 1:
            return direct
        if not direct:
            runs = sorted(p for p in folder.glob("*/*.safetensors") if p.stem == p.parent.name)
            if runs:
                return runs
    return [resolve_checkpoint(item)]


class ModelCache:
    """Translators by checkpoint file, loaded once and shared by all requests; the least recently used is dropped."""

    def __init__(
        self, *, device: str = "auto", size: int = DEFAULT_CACHED_MODELS, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        self.device = device
        self.size = max(1, size)
        self.memory_budget = memory_budget  # per translation: one pass or tiles, by travel.inference.memory's rule
        self._models: OrderedDict[tuple[Path, int], Translator] = OrderedDict()
        self._lock = threading.Lock()  # two requests for a model not loaded yet load it once

    def get(self, path: Path) -> Translator:
        try:
            key = (path.resolve(), path.stat().st_mtime_ns)  # a retrained checkpoint (new mtime) is loaded afresh
        except OSError as exc:
            raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            translator = Translator.from_pretrained(path, device=self.device, memory_budget=self.memory_budget)
            self._models[key] = translator
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return translator

    def __len__(self) -> int:
        return len(self._models)


# ---------------------------------------------------------------------------------------------
# The model card: what the checkpoint's metadata and any `travel eval` report say about it.


def model_card(key: str, info: CheckpointInfo, translator: Translator) -> str:
    weights = translator.weights
    summary = weights.summary
    lines = [f"### {_md(key)}", f"**{_md(weights.source_domain)} → {_md(weights.target_domain)}**"]
    facts = []
    if weights.image_size:
        facts.append(f"trained at {weights.image_size} px")
    if summary.get("steps"):
        facts.append(f"{_int(summary['steps'])} steps")
    if summary.get("batch_size"):
        facts.append(f"batch {_int(summary['batch_size'])}")
    if summary.get("source_images") or summary.get("target_images"):
        facts.append(f"{_int(summary.get('source_images', 0))} source / {_int(summary.get('target_images', 0))} target images")
    if summary.get("train_seconds"):
        facts.append(f"{_duration(summary['train_seconds'])} on {_md(summary.get('device', '?'))}")
    if summary.get("date"):
        facts.append(f"saved {_md(str(summary['date'])[:10])}")
    if facts:
        lines.append(" · ".join(facts))
    styles = weights.config.num_styles
    if styles:
        shares = summary.get("style_frequencies") or []
        detail = ", ".join(f"{k}: {float(s):.0%}" for k, s in enumerate(shares)) if len(shares) == styles else ""
        shares_text = f" (share of targets: {detail})" if detail else ""
        lines.append(f"Self-conditioned: {styles} output styles learnt without labels{shares_text}")
    metrics = summary.get("metrics")
    if isinstance(metrics, dict) and metrics:
        shown = " · ".join(f"{_md(k)} {float(v):.3g}" for k, v in sorted(metrics.items()) if _is_number(v))
        if shown:
            lines.append(f"Last logged training metrics: {shown}")
    lines += _eval_lines(info.path)
    lines.append(f"<small>File ({_md(ORIGINS.get(info.origin, info.origin))}): {_code(info.path)}</small>")
    return "\n\n".join(lines)


def _eval_lines(path: Path) -> list[str]:
    """One line per `travel eval` report found for this checkpoint (beside it, or in runs/NAME/ for shipped ones)."""
    folders = [path.parent, runs_dir() / path.stem]
    reports = sorted({p.resolve() for folder in folders if folder.is_dir() for p in folder.glob(f"{path.stem}.eval-*.json")})
    lines = []
    names = {"l1": "L1", "ssim": "SSIM", "retrieval": "px retrieval", "c2st_accuracy": "C2ST acc", "kid": "KID", "fid": "FID"}
    for report_path in reports[:4]:
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            rows = report["metrics"]
            cells = []
            for key, title in names.items():
                value, baseline = rows["translation"].get(key), rows.get("identity", {}).get(key)
                if _is_number(value):
                    cells.append(f"{title} {value:.3g}" + (f" (identity {baseline:.3g})" if _is_number(baseline) else ""))
            where = f"{Path(str(report.get('data', '?'))).name}, {report.get('settings', {}).get('split', '?')}"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged report costs its line, not the card
        if cells:
            lines.append(f"Evaluation ({_md(where)}): " + " · ".join(cells))
    return lines


def _md(text: Any) -> str:
    """Metadata shown as Markdown text: HTML escaped, and the characters Markdown would format backslashed."""
    escaped = html.escape(str(text))
    return "".join("\\" + c if c in "\\`*_[]#|~" else c for c in escaped)


def _code(text: Any) -> str:
    """A path as Markdown code: shown verbatim, so only a backtick needs replacing."""
    return "`" + str(text).replace("`", "'") + "`"


def _int(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return _md(value)


def _duration(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# What the page's events call. Errors a user can cause become gr.Error: a message in the page, not a crash.


class DemoState:
    """The demo's checkpoints, loaded models, limits and download folder; its methods are the page's event handlers."""

    def __init__(
        self,
        *,
        catalog: dict[str, CheckpointInfo],
        notes: Sequence[str] = (),
        default: str | None,
        cache: ModelCache,
        max_pixels: int,
        max_file_size: int,
    ) -> None:
        self.catalog = catalog
        self.notes = list(notes)
        self.default = default
        self.cache = cache
        self.max_pixels = max_pixels
        self.max_file_size = max_file_size
        self._outputs = tempfile.TemporaryDirectory(prefix="travel-demo-")  # removed when the state is

    def translator(self, key: str | None) -> tuple[CheckpointInfo, Translator]:
        if not self.catalog:
            raise CheckpointError("this demo has no checkpoint to translate with: train one with `travel fit`")
        if not key or key not in self.catalog:
            raise CheckpointError(f"no checkpoint named {key!r} in this demo (available: {', '.join(self.catalog)})")
        info = self.catalog[key]
        return info, self.cache.get(info.path)

    def select(self, key: str | None) -> tuple[str, Any, Any]:
        """On choosing a checkpoint: load it (so the first translation is not slowed), show its card and its options."""
        try:
            info, translator = self.translator(key)
        except TravelError as exc:
            raise _page_error(str(exc)) from None
        styles = translator.weights.config.num_styles
        shares = translator.weights.summary.get("style_frequencies") or []
        shares = shares if len(shares) == styles else [0.0] * styles
        style_choices = [(f"style {k}" + (f" ({float(s):.0%} of targets)" if s else ""), k) for k, s in enumerate(shares)]
        default_style = max(range(styles), key=lambda k: float(shares[k])) if styles else None
        size = translator.weights.image_size
        resolution_choices = [
            (RESOLUTIONS["full"], "full"),
            (RESOLUTIONS["model"] + (f" ({size} px)" if size else ""), "model"),
            (RESOLUTIONS["custom"], "custom"),
        ]
        return (
            model_card(key or "", info, translator),
            gr.update(choices=style_choices, value=default_style, visible=bool(styles)),
            gr.update(choices=resolution_choices),
        )

    def translate(
        self, upload: Any, key: str | None, resolution: str | None, size: Any, style: Any
    ) -> tuple[tuple[Image.Image, Image.Image], str, str]:
        """(before, after) for the slider, the PNG to download, and a status line. `upload` is Gradio's raw file data."""
        try:
            return self._translate(upload, key, resolution, size, style)
        except TravelError as exc:
            raise _page_error(str(exc)) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 -- anything else: a message for the user, the traceback for the log
            log.exception("translation failed")
            raise _page_error(f"translation failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def _translate(self, upload: Any, key: str | None, resolution: str | None, size: Any, style: Any):
        path, name = _uploaded_file(upload)
        info, translator = self.translator(key)
        try:
            if path.stat().st_size > self.max_file_size:  # API clients can skip the page's own check
                raise DataError(f"{name}: the file is larger than this demo's limit of {_file_size(self.max_file_size)}")
            self._check_pixels(path, name)
            image = load_image(path, max_pixels=self.max_pixels)
        except DataError as exc:
            message = str(exc)
            raise DataError(name + message[len(str(path)):] if message.startswith(str(path)) else message) from None
        target = self._size(resolution, size, translator)
        styles = translator.weights.config.num_styles
        style_id = _as_int(style, "style") if styles and style not in (None, "") else None
        started = time.perf_counter()
        before = translator.prepare(image, size=target, max_pixels=self.max_pixels)
        after = translator(before, style=style_id, max_pixels=self.max_pixels)  # [H, W] as `before`
        elapsed = time.perf_counter() - started
        download = self._save(after, f"{Path(name).stem or 'image'}.{info.name}.png")
        status = (
            f"Translated **{_md(name)}** ({after.width} × {after.height} px) with **{_md(key)}**"
            + (f", style {style_id}" if style_id is not None else "")
            + f" in {elapsed:.1f} s."
        )
        return (before, after), str(download), status

    def _check_pixels(self, path: Path, name: str) -> None:
        """Refuse an image with too many pixels from its header alone, in words for someone using the page."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as probe:
                    width, height = probe.size
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return  # load_image gives the reason
        if width * height > self.max_pixels:
            raise DataError(
                f"{name}: {width} × {height} is {width * height / 1e6:.3g} megapixels, more than this demo takes "
                f"({self.max_pixels / 1e6:.3g}); scale it down first"
            )

    def _size(self, resolution: str | None, size: Any, translator: Translator) -> int | None:
        """The shorter side to translate at, or None for the upload's own resolution."""
        resolution = resolution or DEFAULT_RESOLUTION
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        if resolution == "full":
            return None
        if resolution == "model":
            return translator.weights.image_size or None
        side = _as_int(size, "size")
        if not CUSTOM_SIZES[0] <= side <= CUSTOM_SIZES[1]:
            raise ConfigError(f"size must be between {CUSTOM_SIZES[0]} and {CUSTOM_SIZES[1]} pixels, got {side}")
        return side

    def _save(self, image: Image.Image, filename: str) -> Path:
        """The PNG behind the download button, in a folder of its own so that simultaneous users never share a file."""
        root = Path(self._outputs.name)
        cutoff = time.time() - OUTPUT_MAX_AGE_S
        for old in root.iterdir():
            try:
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        path = Path(tempfile.mkdtemp(dir=root)) / filename
        image.save(path, format="PNG")
        return path


def _cleared() -> tuple[Any, Any, str]:
    """What the result column shows while a translation runs: nothing of the previous one."""
    return None, gr.update(value=None, visible=False), ""


def _page_error(message: str) -> gr.Error:
    """An error box in the page that stays until closed. Gradio renders its text as HTML, so it is escaped."""
    return gr.Error(html.escape(message, quote=False), duration=None, print_exception=False)


def _uploaded_file(upload: Any) -> tuple[Path, str]:
    """(path on the server, the name the user knows it by) from Gradio's file data, whatever form it came in."""
    if upload is None or upload == "":
        raise DataError("no image: upload one (or drop, paste or pick an example) first")
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name")
    else:
        path, name = getattr(upload, "path", upload), getattr(upload, "orig_name", None)
    if not path:
        raise DataError("no image: upload one (or drop, paste or pick an example) first")
    path = Path(str(path))
    return path, Path(str(name)).name if name else path.name


def _as_int(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _file_size(size: int) -> str:
    return f"{size / 2**20:.3g} MB" if size >= 2**20 else f"{size / 2**10:.3g} KB"


# ---------------------------------------------------------------------------------------------
# The page.


def build_app(
    *,
    checkpoints: Sequence[str | Path] = (),
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    cached_models: int = DEFAULT_CACHED_MODELS,
    examples: Sequence[str | Path] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> gr.Blocks:
    """The demo's page, with its default checkpoint already loaded. Start it with `launch(app)`.

    checkpoints: names, .safetensors files, run folders or folders of them to offer before the user's runs/
        ($TRAVEL_RUNS) and the shipped weights; the first is opened first (default: DEFAULT_CHECKPOINT if found).
    max_pixels, max_file_size: uploads above these are refused with a message in the page.
    concurrency: translations running at once; up to `queue_size` more requests wait their turn.
    memory_budget: bytes one translation may use (travel.inference.memory: one pass, else tiles; larger images refused), so
        the demo needs at most about `concurrency` times this for translations.
    examples: images offered as examples (default: the shipped models' held-out examples, SHIPPED_EXAMPLES, where
        the repository has them, then the bundled apps/examples/*.png).
    """
    for name, value in (("max_pixels", max_pixels), ("max_file_size", max_file_size), ("concurrency", concurrency),
                        ("queue_size", queue_size), ("cached_models", cached_models), ("memory_budget", memory_budget)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    catalog, notes = find_checkpoints(checkpoints)
    state = DemoState(
        catalog=catalog, notes=notes, default=default_checkpoint(catalog, given=bool(checkpoints)),
        cache=ModelCache(device=device, size=cached_models, memory_budget=memory_budget), max_pixels=max_pixels,
        max_file_size=max_file_size,
    )
    opening = _opening(state)
    if examples is None:
        examples = [p for p in (shipped_examples_dir() / name for name in SHIPPED_EXAMPLES) if p.is_file()]
        examples += sorted(EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []

    # delete_cache: Gradio's copies of uploads and results older than an hour are removed, hourly.
    blocks = gr.Blocks(
        title="travel: image-to-image translation", analytics_enabled=False, delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    )
    with blocks as app:
        gr.Markdown(
            "## travel: image-to-image translation\n"
            "Upload an image (or drop, paste or pick an example), choose a checkpoint and press **Translate**. "
            f"Images up to {_file_size(max_file_size)} and {max_pixels / 1e6:.3g} megapixels."
        )
        gr.Markdown(opening["notice"], visible=bool(opening["notice"]), elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                upload = gr.Image(
                    label="Your image", type="filepath", sources=["upload", "clipboard"], format="png", buttons=["fullscreen"],
                    elem_id="source-image",
                )
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload], label="Examples", elem_id="examples")
                checkpoint = gr.Dropdown(
                    choices=list(catalog), value=state.default, label="Checkpoint", interactive=bool(catalog),
                    elem_id="checkpoint",
                )
                resolution = gr.Radio(
                    choices=opening["resolutions"], value=DEFAULT_RESOLUTION, label="Translate at", elem_id="resolution",
                )
                size = gr.Slider(
                    minimum=CUSTOM_SIZES[0], maximum=CUSTOM_SIZES[1], step=16, value=256, label="Shorter side (pixels)",
                    visible=False, elem_id="custom-size",
                )
                style = gr.Dropdown(
                    choices=opening["styles"], value=opening["style"], label="Output style (cluster)",
                    visible=bool(opening["styles"]), elem_id="style",
                )
                button = gr.Button("Translate", variant="primary", interactive=bool(catalog), elem_id="translate")
            with gr.Column(scale=1):
                result = gr.ImageSlider(
                    label="Before / after", type="pil", format="png", buttons=["fullscreen"], interactive=False, elem_id="result",
                )
                download = gr.DownloadButton("Download the translation (PNG)", visible=False, elem_id="download")
                status = gr.Markdown(elem_id="status")
                card = gr.Markdown(opening["card"], elem_id="model-card")

        resolution.change(lambda r: gr.update(visible=r == "custom"), inputs=resolution, outputs=size, api_visibility="private")
        checkpoint.change(state.select, inputs=checkpoint, outputs=[card, style, resolution], api_name="model_card")
        # preprocess=False: the handler gets the uploaded file's path and decodes it with the package's own
        # loader, so a damaged file gets the package's one-line reason in the page instead of Gradio's error.
        # The previous result goes first, so an error (one line, in a box) never sits above another image's result.
        button.click(
            _cleared, outputs=[result, download, status], api_visibility="private", queue=False,
        ).then(
            state.translate, inputs=[upload, checkpoint, resolution, size, style], outputs=[result, download, status],
            api_name="translate", preprocess=False,
        ).success(lambda: gr.update(visible=True), outputs=download, api_visibility="private", queue=False)
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app.travel_demo = state  # type: ignore[attr-defined]  # launch() and tests read the limits and models here
    return app


def _opening(state: DemoState) -> dict[str, Any]:
    """What the page shows before anyone touches it: the default checkpoint loaded, its card and options, or why not."""
    notice = []
    opening: dict[str, Any] = {"card": "", "styles": [], "style": None, "resolutions": [(v, k) for k, v in RESOLUTIONS.items()]}
    if not state.catalog:
        notice.append(
            f"**No checkpoint found.** None is shipped in {_code(shipped_weights_dir())} and none is in "
            f"{_code(str(runs_dir()) + '/')}. Train one with `travel fit --src A/ --dst B/`, then start the demo again "
            "(or give one: `travel demo --ckpt PATH`)."
        )
    elif state.default is not None:
        try:
            card, styles, resolutions = state.select(state.default)
            opening.update(card=card, styles=styles["choices"], style=styles["value"], resolutions=resolutions["choices"])
        except gr.Error as exc:
            notice.append(f"**The checkpoint {_md(state.default)} cannot be loaded:** {exc.message}")
    if state.notes:
        notice.append("Checkpoints left out: " + "; ".join(_md(n) for n in state.notes))
    opening["notice"] = "\n\n".join(notice)
    return opening


def launch(
    app: gr.Blocks | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    open_browser: bool = False,
    quiet: bool = False,
    **build_options: Any,
) -> gr.Blocks:
    """Serve the demo on http://HOST:PORT (port None: the first free one from 7860). block=False returns at once;
    stop it with `app.close()`. Without `app`, builds one from `build_options` (see build_app)."""
    app = app if app is not None else build_app(**build_options)
    state: DemoState = app.travel_demo  # type: ignore[attr-defined]
    # Gradio's own start-up lines are silenced: they tell a user of `travel demo` to edit a launch() call it never
    # sees. These name the flag instead.
    app.launch(
        server_name=host, server_port=port, share=share, inbrowser=open_browser, prevent_thread_lock=True,
        max_file_size=state.max_file_size, quiet=True, ssr_mode=False, mcp_server=False, show_error=False,
        footer_links=["api"],
    )
    if not quiet:
        print(f"travel demo: serving on {app.local_url}" + (f" and {app.share_url}" if share and app.share_url else ""))
        if share and not app.share_url:
            print("No public link could be made (Gradio's share service was not reached); serving locally only.")
        print("Ctrl-C stops it." + ("" if share else " For a public link too, start it with --share."), flush=True)
    if block:
        app.block_thread()
    return app


# ---------------------------------------------------------------------------------------------
# python apps/demo.py: the same options as `travel demo`.


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The travel web demo (Gradio).")
    parser.add_argument(
        "--ckpt", action="append", default=[], help="A checkpoint to offer first (name, file or folder); repeatable."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="Address to serve on (default 127.0.0.1: this machine only).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: the first free one from 7860).")
    parser.add_argument("--share", action="store_true", help="Also serve through a public Gradio share link.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps.")
    parser.add_argument("--max-file-size-mb", type=float, default=DEFAULT_MAX_FILE_SIZE / 2**20, help="Refuse larger uploads.")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="Refuse images with more pixels.")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="Translations at once; others queue.")
    parser.add_argument("--memory-budget", default="2G", help="Memory one translation may use (e.g. 2G): one pass or tiles.")
    parser.add_argument("--open", action="store_true", help="Open the page in a web browser.")
    args = parser.parse_args(argv)
    try:
        from travel.inference.memory import parse_size

        serve(
            memory_budget=parse_size(args.memory_budget),
            checkpoints=args.ckpt, host=args.host, port=args.port, share=args.share, device=args.device,
            max_file_size=round(args.max_file_size_mb * 2**20), max_pixels=args.max_pixels, concurrency=args.concurrency,
            open_browser=args.open,
        )
    except TravelError as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:  # a port in use, an address that is not ours
        raise SystemExit(f"error: {exc.strerror or exc}") from None


def serve(*, max_pixels: int = DEFAULT_MAX_PIXELS, **options: Any) -> gr.Blocks:
    """Build and serve until Ctrl-C: what `travel demo` and `python apps/demo.py` run."""
    # Pillow refuses images above twice its own limit before ours is asked; max_pixels is the one limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    _limit_malloc_arenas()
    return launch(max_pixels=max_pixels, **options)


MALLOC_ARENAS = 1  # glibc malloc arenas for the serving process (glibc's default: 8 per core)


def _limit_malloc_arenas() -> None:
    """Keep memory flat under load: one glibc malloc arena, so freed translation buffers are reused by every thread.

    Gradio runs each request on a worker thread of a pool whose threads come and go; glibc gives new threads their
    own arenas (up to 8 per core), and each arena keeps the megabytes of activations it once served. Measured with
    benchmarks/demo_load.py (8 clients x 400 requests, 128 px, 32 channels, 2 cores): the server's RSS grew from
    860 to 950 MB and was still rising (malloc's free-but-held bytes 155 -> 244 MB, in use flat at 192-194 MB); with
    one arena it stayed at 750-760 MB, with two it rose 22 MB; throughput was the same. malloc_trim after each
    request did not help; a fixed 256 KB mmap threshold did, but made a translation 1.9x slower. Figures in
    docs/BENCHMARKS.md ("Web demo under load"). Set before the server's threads start. Only glibc has mallopt;
    elsewhere, or when MALLOC_ARENA_MAX is set, this does nothing.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, MALLOC_ARENAS)  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):  # musl or another C library
        pass


if __name__ == "__main__":
    main()
