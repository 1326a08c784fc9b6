"""`travel translate`, `travel models`, `travel export` and `travel demo`: using a trained translator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from travel import DEFAULT_CHECKPOINT
from travel.cli.app import app
from travel.cli.common import user_errors
from travel.errors import TravelError


# ---------------------------------------------------------------------------------------------
# travel translate


@app.command()
@user_errors
def translate(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or quoted globs ('shots/**/*.jpg')."),
    ckpt: str = typer.Option(
        DEFAULT_CHECKPOINT, "--ckpt", help="A checkpoint name (see `travel models`), a .safetensors file or a run folder."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: beside each input); folder inputs keep their sub-folders."),
    size: Optional[int] = typer.Option(None, "--size", help="Resize the shorter side to this many pixels first (default: keep the resolution)."),
    style: Optional[str] = typer.Option(
        None, "--style", help="Self-conditioned models: a style (cluster id), or 'all' for one output per style (PHOTO.CKPT.styleK.png)."
    ),
    tile: Optional[int] = typer.Option(
        None, "--tile", help="Tile side in pixels (default: one pass if it fits --memory-budget, else the largest tiles that do; 0: one pass only)."
    ),
    overlap: int = typer.Option(64, "--overlap", help="Pixels shared by neighbouring tiles, blended without seams."),
    memory_budget: str = typer.Option(
        "2G", "--memory-budget", help="Memory one translation may use (e.g. 2G, 512M): decides one pass or tiles; images that cannot fit are refused."
    ),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Refuse images with more pixels (decompression bombs)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images of one size translated together."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no list of written files."),
) -> None:
    """Translate images; writes PHOTO.CKPT.png beside each input (or into --out). Exit 1 if some inputs failed."""
    from travel.errors import ConfigError

    for flag, value, least in (
        ("--size", size, 1), ("--tile", tile, 0), ("--overlap", overlap, 0), ("--max-pixels", max_pixels, 1),
        ("--batch-size", batch_size, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    from travel.inference.memory import parse_size

    budget = parse_size(memory_budget)  # a size that is not one, or 0, is refused here with the flag's name
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")

    from PIL import Image

    from travel.inference import Translator, check_tiling

    translator = Translator.from_pretrained(ckpt, device=device, memory_budget=budget)
    if style == "all":
        if not translator.num_styles:
            raise ConfigError(f"--style all: {translator.name} is not a self-conditioned model (it has one style)")
        styles: list[int | None] = list(range(translator.num_styles))
    elif style is None:
        styles = [None]
    else:
        try:
            styles = [int(style)]
        except ValueError:
            raise ConfigError(f"--style must be a style number or 'all', got {style!r}") from None
        translator.style_ids(styles[0], 1)  # an out-of-range --style fails now, not once per image
    if tile:
        check_tiling(tile, overlap, translator.multiple)
    # Pillow refuses images above twice its own limit before ours is even asked; --max-pixels is the one limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    written, total, failures = 0, 0, []
    for chosen in styles:
        name = translator.name if style != "all" else f"{translator.name}.style{chosen}"
        jobs, failures = _plan_translation(inputs, out=out, name=name, skip=translator.name)
        if not jobs and not failures:
            raise ConfigError("no images found in the given inputs")
        settings = dict(size=size, style=chosen, tile=tile, overlap=overlap, max_pixels=max_pixels)
        total = len(jobs) + len(failures)
        written += _translate_jobs(translator, jobs, failures, settings=settings, batch_size=batch_size, quiet=quiet)
    if failures:
        if total > 1:  # one input's own error line already says it all
            typer.echo(f"error: {len(failures)} of {total} input(s) failed; translated {written}", err=True)
        raise typer.Exit(1)


def _plan_translation(
    inputs: list[str], *, out: Path | None, name: str, skip: str | None = None
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, output) pairs for every image the arguments name, and one message per argument that names none.

    Folders are searched recursively, skipping earlier outputs of this checkpoint (*.NAME.png, *.NAME.styleK.png), so running
    twice over a folder does not translate translations. Refuses (a usage error) an output that would
    overwrite an input, or two inputs that would write the same output.
    """
    import glob
    import re

    from travel.data import IMAGE_EXTENSIONS, find_images
    from travel.errors import ConfigError

    jobs: dict[Path, tuple[Path, Path]] = {}  # resolved source -> (source, output)
    failures: list[str] = []
    suffix = f".{name}.png"
    # Earlier outputs of this checkpoint, of any style: PHOTO.CKPT.png and PHOTO.CKPT.styleK.png.
    earlier = re.compile(rf"\.{re.escape(skip or name)}(\.style\d+)?\.png$")

    def add_file(path: Path, root: Path | None) -> None:
        folder = path.parent if out is None else (out / path.parent.relative_to(root) if root is not None else out)
        jobs.setdefault(path.resolve(), (path, folder / f"{path.stem}{suffix}"))

    def add(path: Path) -> None:
        if path.is_dir():
            found = [p for p in find_images(path) if not earlier.search(p.name)]
            if not found:
                failures.append(f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
            for file in found:
                add_file(file, path)
        elif path.exists():
            add_file(path, None)
        else:
            failures.append(f"{path}: no such file or folder")

    for argument in inputs:
        if not Path(argument).exists() and glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                failures.append(f"{argument}: no files match this pattern")
            for match in matches:
                add(Path(match))
        else:
            add(Path(argument))
    writers: dict[Path, Path] = {}
    for source, target in jobs.values():
        key = target.resolve()
        if key in jobs:
            raise ConfigError(f"{target} is also an input; refusing to overwrite it (write elsewhere with --out)")
        if key in writers:
            raise ConfigError(f"{writers[key]} and {source} would both be written to {target}; use --out with folders, or rename one")
        writers[key] = source
    return list(jobs.values()), failures


def _translate_jobs(
    translator: Any, jobs: list[tuple[Path, Path]], failures: list[str], *, settings: dict[str, Any], batch_size: int, quiet: bool
) -> int:
    """Translate and write every job, `batch_size` images per call; report failures as they happen. Returns how many were written."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from travel.checkpoint import atomic_path
    from travel.data import load_image

    console = Console(stderr=True, highlight=False)
    for message in failures:
        console.print(f"error: {message}", markup=False, soft_wrap=True)
    show_bar = not quiet and len(jobs) > 1
    columns = (TextColumn("[bold]translate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    written = 0
    with Progress(*columns, console=console, disable=not show_bar, transient=True) as bar:
        task = bar.add_task("translate", total=len(jobs))

        def failed(source: Path, reason: str) -> None:
            message = reason if reason.startswith(str(source)) else f"{source}: {reason}"
            failures.append(message)
            bar.console.print(f"error: {message}", markup=False, soft_wrap=True)

        for start in range(0, len(jobs), batch_size):
            chunk = []
            for source, target in jobs[start:start + batch_size]:
                try:
                    chunk.append((source, target, load_image(source, max_pixels=settings["max_pixels"])))
                except TravelError as exc:
                    failed(source, str(exc))
                    bar.advance(task)
            try:
                results = translator.translate_batch([image for _, _, image in chunk], batch_size=batch_size, **settings)
            except (TravelError, RuntimeError, MemoryError):
                results = []
                for source, _, image in chunk:  # find which image it was, and keep the others
                    try:
                        results.append(translator(image, **settings))
                    except TravelError as exc:  # refused by the memory rule, or an out-of-memory in the pass
                        results.append(None)
                        failed(source, str(exc))
                    except MemoryError:  # outside the translation itself (decoding, writing): still one line
                        results.append(None)
                        failed(source, "out of memory; lower --memory-budget or --size")
                    except RuntimeError as exc:
                        results.append(None)
                        failed(source, f"translation failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            for (source, target, _), result in zip(chunk, results):
                if result is not None:
                    with atomic_path(target) as tmp:
                        result.save(tmp, format="PNG")
                    written += 1
                    if not quiet:
                        typer.echo(str(target))
                bar.advance(task)
    return written



# ---------------------------------------------------------------------------------------------
# travel models, travel export


@app.command()
@user_errors
def models(as_json: bool = typer.Option(False, "--json", help="One JSON object per checkpoint, for scripts.")) -> None:
    """List the checkpoints --ckpt NAME finds: your runs/ (or $TRAVEL_RUNS) first, then the shipped weights."""
    import json

    from travel.inference import list_checkpoints, runs_dir

    infos = list_checkpoints()
    if as_json:
        for info in infos:
            typer.echo(json.dumps({**info.__dict__, "path": str(info.path)}, sort_keys=True))
        return
    if not infos:
        typer.echo(f"no checkpoints: none shipped, none in {runs_dir()}/. Train one with `travel fit`.")
        return
    used: set[str] = set()
    rows = [("NAME", "DOMAINS", "SIZE", "DATE", "STEPS", "FROM")]
    for info in infos:
        origin = f"{info.origin}: {info.path}"
        if info.name in used:
            origin += " (hidden by the run of the same name)"
        used.add(info.name)
        if info.problem:
            rows.append((info.name, "unusable: " + info.problem, "", "", "", origin))
            continue
        domains = f"{info.source_domain} -> {info.target_domain}"
        rows.append((info.name, domains, str(info.image_size or "?"), info.date or "?", str(info.steps or "?"), origin))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


@app.command()
@user_errors
def export(
    ckpt: str = typer.Option(..., "--ckpt", help="A checkpoint name, a .safetensors file or a run folder."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="The .onnx file to write (dynamic batch, height and width)."),
    safetensors: Optional[Path] = typer.Option(
        None, "--safetensors", help="A .safetensors copy to write (e.g. weights/NAME.safetensors to ship a model)."
    ),
    half: bool = typer.Option(False, "--half", help="With --safetensors: store float16 (half the size; loads as float32)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run the export in onnxruntime and compare it with PyTorch."),
) -> None:
    """Export a checkpoint's generator: to ONNX (input 'source' [N, 3, H, W] in [-1, 1], output 'translation'),
    or as a (half-precision) .safetensors copy with its metadata, the form weights/ ships."""
    from travel.checkpoint import load_weights, save_weights
    from travel.errors import ConfigError
    from travel.inference import resolve_checkpoint

    if onnx is None and safetensors is None:
        raise ConfigError("give --onnx FILE and/or --safetensors FILE")
    if half and safetensors is None:
        raise ConfigError("--half applies to --safetensors")
    weights = load_weights(resolve_checkpoint(ckpt))
    if safetensors is not None:
        if safetensors.suffix != ".safetensors":
            raise ConfigError(f"--safetensors {safetensors}: the file name must end in .safetensors")
        save_weights(
            safetensors, weights.build(), source_domain=weights.source_domain, target_domain=weights.target_domain,
            image_size=weights.image_size, summary=weights.summary, half=half,
        )
        typer.echo(str(safetensors))
    if onnx is not None:
        from travel.inference.export import MAX_ABS_DIFF, export_onnx

        report = export_onnx(weights, onnx, opset=opset, check=check)
        for shape, diff in report.checked:
            typer.echo(f"checked in onnxruntime at {list(shape)}: max |onnx - torch| = {diff:.1e} (limit {MAX_ABS_DIFF:.0e})", err=True)
        typer.echo(str(report.path))


# ---------------------------------------------------------------------------------------------
# travel demo


@app.command()
@user_errors
def demo(
    ckpt: list[str] = typer.Option(
        [], "--ckpt", help="Checkpoint to offer first (name, .safetensors file, run folder or folder of runs); repeatable."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on: 127.0.0.1 is this machine only."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: the first free one from 7860)."),
    share: bool = typer.Option(False, "--share/--no-share", help="Also serve through a public Gradio share link."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    max_file_size_mb: float = typer.Option(20.0, "--max-file-size-mb", help="Refuse larger uploads (megabytes)."),
    max_pixels: int = typer.Option(25_000_000, "--max-pixels", help="Refuse images with more pixels."),
    concurrency: int = typer.Option(2, "--concurrency", help="Translations at once; further requests queue."),
    memory_budget: str = typer.Option(
        "2G", "--memory-budget", help="Memory one translation may use (e.g. 2G): one pass, else tiles; larger images are refused."
    ),
    open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the page in a web browser."),
) -> None:
    """Start the web demo (Gradio) at http://HOST:PORT: upload images and translate them in the browser. Ctrl-C stops it."""
    from travel.errors import ConfigError

    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if max_file_size_mb <= 0:
        raise ConfigError(f"--max-file-size-mb must be > 0, got {max_file_size_mb:g}")
    from travel.inference.memory import parse_size

    _demo_module().serve(
        checkpoints=ckpt, host=host, port=port, share=share, device=device, max_file_size=round(max_file_size_mb * 2**20),
        max_pixels=max_pixels, concurrency=concurrency, memory_budget=parse_size(memory_budget), open_browser=open_browser,
    )


def _demo_module() -> Any:
    """apps/demo.py, the web app: installed as travel.apps.demo, or loaded from an uninstalled source checkout."""
    import importlib.util
    import sys

    from travel.errors import ConfigError

    try:
        import travel.apps.demo as installed

        return installed
    except ModuleNotFoundError as exc:
        if exc.name not in ("travel.apps", "travel.apps.demo"):
            raise
    name = "travel_demo_app"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "apps" / "demo.py"
    if not path.is_file():
        raise ConfigError(f"the web demo is apps/demo.py in a source checkout of travel, and {path} is missing")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise
    return module


