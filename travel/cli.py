"""The `travel` command line: fit, translate and friends. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from travel import DEFAULT_CHECKPOINT
from travel.config import DEFAULT_CHANNELS, DEFAULT_PADDING
from travel.errors import TravelError

app = typer.Typer(
    name="travel",
    help="Unpaired image-to-image translation: train on two folders of images, translate new ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's errors (and disk errors) into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TravelError as exc:
            fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


# ---------------------------------------------------------------------------------------------
# travel fit


@app.command()
@user_errors
def fit(
    ctx: typer.Context,
    src: Optional[Path] = typer.Option(None, "--src", help="Folder of source-domain images (searched recursively)."),
    dst: Optional[Path] = typer.Option(None, "--dst", help="Folder of target-domain images."),
    data: Optional[Path] = typer.Option(None, "--data", help="A folder in the CycleGAN layout (trainA/, trainB/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: runs/NAME/ and NAME.safetensors. Default: SRC2DST."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the run folder goes (default runs/NAME)."),
    steps: int = typer.Option(10_000, "--steps", help="Generator updates."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per domain per step (>= 2)."),
    size: int = typer.Option(128, "--size", help="Training crop, in pixels."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Shorter side before cropping (default about 1.12 x size)."),
    disc: str = typer.Option("projected", "--disc", help="Discriminator family: projected (frozen ImageNet features), or scratch."),
    lr_g: Optional[float] = typer.Option(None, "--lr-g", help="Generator learning rate (TTUR). Default: 1e-4 scratch, 2e-4 projected."),
    lr_d: float = typer.Option(4e-4, "--lr-d", help="Discriminator learning rate (TTUR)."),
    d_steps: int = typer.Option(1, "--d-steps", help="Discriminator updates per generator update."),
    vec_len: Optional[int] = typer.Option(None, "--vec-len", help="Length of the discriminator's vectors. Default: 128 scratch, 32 projected (per patch)."),
    siamese: Optional[str] = typer.Option(None, "--siamese", help="shared: S is the discriminator; separate: S is its own network. Default: shared scratch, separate projected."),
    head_channels: int = typer.Option(64, "--head-channels", help="Projected discriminator: width of each scale's head."),
    d_resolution: Optional[int] = typer.Option(None, "--d-resolution", help="Projected discriminator: resize images to this side before the frozen backbone (a multiple of 32; default: 128, or the crop rounded up to 32 if larger)."),
    mixing: str = typer.Option("none", "--mixing", help="Projected discriminator: fixed random feature mixing, none, ccm (channels) or ccm+csm (channels and scales)."),
    pixel_weight: float = typer.Option(
        0.0, "--pixel-weight",
        help="Projected discriminator: weight of a pixel-space branch (a scratch encoder on the images as they are) beside the frozen-feature heads; 0 = none.",
    ),
    channels: int = typer.Option(DEFAULT_CHANNELS, "--channels", help="Generator and discriminator width at full resolution."),
    depth: int = typer.Option(4, "--depth", help="Generator and discriminator downsamplings."),
    padding: str = typer.Option(DEFAULT_PADDING, "--padding", help="Generator border padding: replicate or zeros (lets G paint frames)."),
    skip_from: int = typer.Option(0, "--skip-from", help="Generator U-Net skips from level N down only: 0 keeps all; 1 drops the full-resolution skip (G redraws strokes)."),
    warp: bool = typer.Option(True, "--warp/--no-warp", help="Generator learns a displacement field that moves strokes (starts at zero); --no-warp repaints in place only."),
    residual: bool = typer.Option(True, "--residual/--no-residual", help="Generator output: the input plus a learned change (starts as the identity), or drawn afresh."),
    travel_weight: Optional[float] = typer.Option(None, "--travel-weight", help="Weight of the TraVeL content loss. Default: 10 scratch, 0.2 projected."),
    r1: float = typer.Option(0.0, "--r1", help="R1 gradient penalty weight on real images (0 = off)."),
    rotation: bool = typer.Option(False, "--rotation/--no-rotation", help="Self-supervised rotation loss (SS-GAN)."),
    rotation_d: float = typer.Option(1.0, "--rotation-d", help="Discriminator's rotation loss weight (beta)."),
    rotation_g: float = typer.Option(0.2, "--rotation-g", help="Generator's rotation loss weight (alpha)."),
    rotation_decay: bool = typer.Option(True, "--rotation-decay/--no-rotation-decay", help="Decay alpha linearly to 0."),
    clusters: int = typer.Option(0, "--clusters", help="Self-conditioning: K style clusters of the targets (0 = off)."),
    recluster_every: int = typer.Option(1000, "--recluster-every", help="Steps between reclusterings."),
    cluster_features: str = typer.Option(
        "discriminator", "--cluster-features",
        help="What self-conditioning clusters: discriminator (D's trunk features, reclustered as D learns) or backbone (style statistics of the frozen ImageNet features, clustered once).",
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Differentiable augmentation for the discriminator."),
    augment_colour: bool = typer.Option(
        True, "--augment-colour/--no-augment-colour",
        help="Colour jitter among those augmentations; --no-augment-colour lets D see every colour as G drew it.",
    ),
    flip: bool = typer.Option(
        True, "--flip/--no-flip",
        help="Random horizontal flips of the training images; --no-flip for domains a mirror changes (text, slanted styles).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same run."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), fp32, bf16 or fp16."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    cache: bool = typer.Option(False, "--cache/--no-cache", help="Keep decoded images in memory."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the networks (slow first steps)."),
    channels_last: bool = typer.Option(False, "--channels-last/--no-channels-last", help="NHWC layout (faster convolutions on CPU and GPU)."),
    log_every: int = typer.Option(10, "--log-every", help="Steps between metrics.jsonl lines."),
    sample_every: int = typer.Option(500, "--sample-every", help="Steps between sample grids."),
    save_every: int = typer.Option(1000, "--save-every", help="Steps between saves of the resume state and weights."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder (use --steps to extend it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a run folder that already holds a run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit."),
) -> None:
    """Train a translator from --src images to --dst images."""
    from dataclasses import replace

    from travel.config import (
        FAMILY_DEFAULTS, ClusterConfig, DataConfig, FitConfig, LossConfig, TrainConfig, model_config_for, to_json,
    )
    from travel.data import resolve_domains

    if resume is not None:
        from travel.train import resume_config

        explicit_steps = _explicit(ctx, "steps")
        config = resume_config(
            resume, steps=steps if explicit_steps else None, workers=workers if _explicit(ctx, "workers") else None,
            compile=compile if _explicit(ctx, "compile") else None,
            channels_last=channels_last if _explicit(ctx, "channels_last") else None,
        )
        run_dir = resume
    else:
        source, target = resolve_domains(str(src) if src else None, str(dst) if dst else None, str(data) if data else None)
        # --data horse2zebra names the run horse2zebra: "trainA2trainB" would put every CycleGAN dataset in one folder.
        name = name or (data.resolve().name if data and not (src or dst) else f"{source.resolve().name}2{target.resolve().name}")
        model = model_config_for(
            size=size, channels=channels, depth=depth, vec_len=vec_len, rotation=rotation, clusters=clusters, siamese=siamese,
            padding=padding, disc=disc, head_channels=head_channels, mixing=mixing, residual=residual, skip_from=skip_from, warp=warp,
            d_resolution=d_resolution, pixel_weight=pixel_weight,
        )
        family = FAMILY_DEFAULTS[disc]
        config = FitConfig(
            name=name,
            model=model,
            loss=LossConfig(
                travel=travel_weight if travel_weight is not None else family.travel, r1_gamma=r1, rotation_d=rotation_d if rotation else 0.0, rotation_g=rotation_g,
                rotation_g_decay=rotation_decay,
            ),
            clusters=ClusterConfig(clusters=clusters, recluster_every=recluster_every, features=cluster_features),  # type: ignore[arg-type]
            data=DataConfig(
                source=str(source.resolve()), target=str(target.resolve()),
                load_size=load_size if load_size is not None else max(size, round(size * 1.12)), crop_size=size,
                augment=augment, augment_colour=augment_colour, flip=flip, workers=workers, cache=cache,
            ),
            train=TrainConfig(
                steps=steps, batch_size=batch_size, lr_g=lr_g if lr_g is not None else family.lr_g, lr_d=lr_d, d_steps=d_steps, seed=seed,
                device=device, precision=precision, log_every=log_every, sample_every=sample_every,  # type: ignore[arg-type]
                save_every=save_every, compile=compile, channels_last=channels_last,
            ),
        )
        config = replace(config)
        run_dir = run_dir or Path("runs") / config.name
    if dry_run:
        typer.echo(to_json(config))
        return
    _run_fit(config, run_dir, resume=resume is not None, overwrite=overwrite)


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option `name`: asks the parser, so it holds for app(args) and CliRunner, not only sys.argv."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run_fit(config: Any, run_dir: Path, *, resume: bool, overwrite: bool = False) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import os

    from travel.train import fit as fit_run

    # Under torchrun every process runs this command; rank 0 alone draws the bar and reports, as it alone writes.
    main_rank = os.environ.get("RANK", "0") in ("", "0")
    console = Console(stderr=True, quiet=not main_rank)
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(config.name, total=config.train.steps, speed="", losses="")

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            speed = f"{metrics['images_per_s']:.1f} img/s" if "images_per_s" in metrics else ""
            losses = " ".join(f"{k}={metrics[k]:.3f}" for k in ("d_total", "g_adv", "g_travel_cos") if k in metrics)
            bar.update(task, completed=step, speed=speed, losses=losses)

        def say(message: str) -> None:
            # Warnings name files: no markup (a "[1]" in a name is text), no wrapping (paths stay on one line).
            console.print(message, markup=False, highlight=False, soft_wrap=True)

        try:
            result = fit_run(config, run_dir, resume=resume, overwrite=overwrite, progress_fn=progress, message_fn=say)
        except BaseException:
            console.quiet = True  # the error is then the one line the user sees: no bar drawn again above it
            raise
    if result.interrupted:
        if main_rank:
            typer.echo(f"stopped at step {result.step}; state saved. Continue with: travel fit --resume {result.run_dir}", err=True)
        raise typer.Exit(130)
    skipped = f"; skipped {len(result.skipped_images)} unreadable image(s)" if result.skipped_images else ""
    if main_rank:
        typer.echo(f"done: {result.step} steps{skipped}. Weights: {result.weights}")


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
    from travel.memory import parse_size

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
# Sub-command groups. Each command imports what it needs inside its body, so `travel --help` is fast.

bench_app = typer.Typer(help="Benchmarks: training and inference speed.", no_args_is_help=True)
data_app = typer.Typer(help="Build benchmark datasets from registry packages.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")

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
        from travel.export import MAX_ABS_DIFF, export_onnx

        report = export_onnx(weights, onnx, opset=opset, check=check)
        for shape, diff in report.checked:
            typer.echo(f"checked in onnxruntime at {list(shape)}: max |onnx - torch| = {diff:.1e} (limit {MAX_ABS_DIFF:.0e})", err=True)
        typer.echo(str(report.path))

# ---------------------------------------------------------------------------------------------
# travel eval, travel bench speed


@app.command("eval")
@user_errors
def evaluate_command(
    ckpt: str = typer.Option(..., "--ckpt", help="A .safetensors file, a run folder, or a checkpoint name."),
    data: Path = typer.Option(..., "--data", help="A folder in the CycleGAN layout: testA/ (sources) and testB/ (targets)."),
    split: str = typer.Option("test", "--split", help="Reads SPLITA/ and SPLITB/ inside --data."),
    size: Optional[int] = typer.Option(None, "--size", help="Square side images are scored at (default: the checkpoint's training size)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score at most this many images per side."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON report (default: beside the checkpoint)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the two-sample test and the KID subsets."),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights", help="torchvision inception_v3 state dict (.pth or .safetensors) for KID/FID; skipped without it."
    ),
    recogniser: Optional[Path] = typer.Option(
        None, "--recogniser", help="Character recogniser for glyph sets (default: DATA/recogniser.safetensors if present)."
    ),
    backbone: bool = typer.Option(True, "--backbone/--no-backbone", help="KID, FD and retrieval on ImageNet EfficientNet-Lite0 features."),
    c2st_steps: int = typer.Option(300, "--c2st-steps", help="Training steps of the two-sample classifier."),
    c2st_size: int = typer.Option(64, "--c2st-size", help="Image side the two-sample classifier sees."),
    c2st_seeds: int = typer.Option(5, "--c2st-seeds", help="Two-sample classifier seeds averaged (from --seed on)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
) -> None:
    """Score a checkpoint on a test set: L1, SSIM, retrieval (paired sets), two-sample test, KID/FID; identity baseline beside."""
    from travel.evaluate import EvalSettings, default_output_path, evaluate, format_table, write_report

    settings = EvalSettings(
        split=split, size=size, limit=limit, seed=seed, batch_size=batch_size, device=device, c2st_size=c2st_size,
        c2st_steps=c2st_steps, c2st_seeds=c2st_seeds, inception_weights=str(inception_weights) if inception_weights else None,
        backbone=backbone, recogniser=str(recogniser) if recogniser else None,
    )
    report = evaluate(ckpt, data, settings=settings, say=lambda message: typer.echo(message, err=True))
    path = write_report(report, out or default_output_path(report["checkpoint_path"], data, split=split))
    typer.echo(format_table(report))
    typer.echo(f"saved {path}")


@bench_app.command("speed")
@user_errors
def bench_speed(
    size: int = typer.Option(128, "--size", help="Square image side, pixels."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per domain per training step; also the batched inference size."),
    steps: int = typer.Option(10, "--steps", help="Timed training steps (the median is reported)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed steps first."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="Training precision, as in travel fit: auto, fp32, bf16, fp16."),
    channels: int = typer.Option(DEFAULT_CHANNELS, "--channels", help="Generator and discriminator width, as in travel fit."),
    depth: int = typer.Option(4, "--depth", help="Downsamplings, as in travel fit."),
    disc: str = typer.Option("projected", "--disc", help="Discriminator family, as in travel fit: projected or scratch."),
    vec_len: Optional[int] = typer.Option(None, "--vec-len", help="Discriminator vector length (default: the family's)."),
    siamese: Optional[str] = typer.Option(None, "--siamese", help="shared or separate, as in travel fit (default: the family's)."),
    padding: str = typer.Option(DEFAULT_PADDING, "--padding", help="Generator border padding, as in travel fit."),
    warp: bool = typer.Option(True, "--warp/--no-warp", help="Generator displacement field, as travel fit --warp (the default)."),
    rotation: bool = typer.Option(False, "--rotation/--no-rotation", help="Include the SS-GAN rotation loss."),
    pixel_weight: float = typer.Option(0.0, "--pixel-weight", help="Projected discriminator's pixel-space branch, as in travel fit."),
    channels_last: bool = typer.Option(False, "--channels-last/--no-channels-last", help="Train in NHWC, as travel fit --channels-last."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the trained networks, as travel fit --compile."),
    profile: bool = typer.Option(False, "--profile/--no-profile", help="Also print torch.profiler's top operators for inference and one training step."),
    matmul_size: Optional[int] = typer.Option(None, "--matmul-size", help="Side of the peak matmul (default 2048 CPU, 8192 CUDA)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also save the numbers as JSON here."),
) -> None:
    """Training images/s, inference ms/image, peak memory, FLOPs and share of a matmul peak on this device."""
    import json

    import torch

    from travel.checkpoint import atomic_write_text
    from travel.errors import ConfigError
    from travel.speed import SpeedSettings, format_profile, format_report, run_speed

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    settings = SpeedSettings(
        size=size, batch_size=batch_size, steps=steps, warmup=warmup, device=device, precision=precision, channels=channels,
        depth=depth, disc=disc, vec_len=vec_len, siamese=siamese, padding=padding, warp=warp, rotation=rotation, matmul_size=matmul_size,
        pixel_weight=pixel_weight,
        channels_last=channels_last, compile=compile, profile=profile,
    )
    report = run_speed(settings, say=lambda message: typer.echo(f"measuring {message}", err=True))
    typer.echo(format_report(report))
    if profile:
        typer.echo("\n" + format_profile(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        typer.echo(f"saved {json_path}")


# travel data glyphs / travel data emoji: the benchmark datasets (builders in travel/datasets.py)


@data_app.command("glyphs")
@user_errors
def data_glyphs(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: data/glyphs-SIZE)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels (64 and 128 are the benchmark sizes)."),
    seed: int = typer.Option(0, "--seed", help="Split seed: same seed, same files."),
    source_font: Path = typer.Option(
        Path("/usr/share/fonts/truetype/arphic/uming.ttc"), "--source-font", help="Domain A font (Debian fonts-arphic-uming)."
    ),
    target_font: Path = typer.Option(
        Path("/usr/share/fonts/truetype/arphic/ukai.ttc"), "--target-font", help="Domain B font (Debian fonts-arphic-ukai)."
    ),
    source_index: int = typer.Option(0, "--source-index", help="Face in a .ttc collection (0: the CN face)."),
    target_index: int = typer.Option(0, "--target-index", help="Face in a .ttc collection (0: the CN face)."),
    style_font: Optional[List[str]] = typer.Option(
        None, "--style-font",
        help="FONT or FONT#FACE, two or more times: domain B mixes these styles instead of --target-font, an equal "
        "share each, and styles.json records each target's true style (for scoring self-conditioning).",
    ),
    margin: float = typer.Option(1 / 16, "--margin", help="White border per side, as a fraction of the size."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of characters held out as test pairs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N characters by code point (trial builds)."),
    chars: Optional[str] = typer.Option(None, "--chars", help="Render these characters instead of GB2312's 6,763 hanzi."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A dataset_card.json to check the build against."),
) -> None:
    """GB2312's 6,763 hanzi in a Song font (A) and a Kai font (B), ink-cropped, in the CycleGAN layout."""
    from travel.datasets import build_glyphs

    styles = [_font_and_face(value) for value in style_font or []]
    folder = out or Path("data") / (f"glyph-styles-{size}" if styles else f"glyphs-{size}")
    _run_build(
        "glyphs", build_glyphs, folder, size=size, seed=seed, source_font=source_font, target_font=target_font,
        source_index=source_index, target_index=target_index, style_fonts=styles, margin=margin,
        test_fraction=test_fraction, limit=limit,
        characters=list(chars) if chars else None, overwrite=overwrite, compare_card=compare,
    )


def _font_and_face(value: str) -> tuple[Path, int]:
    """--style-font FONT or FONT#FACE (the face index in a .ttc collection) as (path, face)."""
    from travel.errors import ConfigError

    path, _, face = value.rpartition("#") if "#" in value else (value, "", "0")
    try:
        return Path(path), int(face)
    except ValueError:
        raise ConfigError(f"--style-font {value}: the face after # must be a number (FONT#2)") from None


@data_app.command("emoji")
@user_errors
def data_emoji(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: data/emoji-SIZE)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Split seed: same seed, same files."),
    npm_cache: Optional[Path] = typer.Option(
        None, "--npm-cache", help="Folder holding `npm pack` tarballs or node_modules/ (default $TRAVEL_NPM_CACHE or ~/.cache/travel-npm)."
    ),
    twemoji: Optional[Path] = typer.Option(None, "--twemoji", help="@twemoji/svg: a .tgz or the unpacked package folder."),
    fluent: Optional[Path] = typer.Option(None, "--fluent", help="@lobehub/fluent-emoji-3d: a .tgz or the unpacked package folder."),
    unmatched: str = typer.Option("drop", "--unmatched", help="Emoji only one package has: drop, or train (add to that domain's train folder)."),
    margin: float = typer.Option(1 / 16, "--margin", help="White border per side, as a fraction of the size."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of emoji held out as test pairs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N emoji by code point (trial builds)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A dataset_card.json to check the build against."),
) -> None:
    """Flat Twemoji (A) to Fluent 3D emoji (B), paired by code point for the test split; needs cairosvg."""
    from travel.datasets import build_emoji

    folder = out or Path("data") / f"emoji-{size}"
    _run_build(
        "emoji", build_emoji, folder, size=size, seed=seed, npm_cache=npm_cache, twemoji=twemoji, fluent=fluent,
        unmatched=unmatched, margin=margin, test_fraction=test_fraction, limit=limit, overwrite=overwrite, compare_card=compare,
    )


@data_app.command("recogniser")
@user_errors
def data_recogniser(
    data: Path = typer.Option(..., "--data", help="A `travel data glyphs` folder: its test characters are learnt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to save it (default: DATA/recogniser.safetensors, which travel eval finds)."),
    split: str = typer.Option("test", "--split", help="Learn the characters of this split (the ones travel eval scores)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps (batches of 64 augmented renders)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same recogniser (on one machine)."),
) -> None:
    """Train the glyph benchmark's content score: a character recogniser on fonts that are neither benchmark font."""
    from rich.progress import Progress

    from travel.recogniser import dataset_characters, save_recogniser, train_recogniser

    chars = dataset_characters(data, split)
    wanted = sorted(set(chars["A"].values()) | set(chars["B"].values()))
    path = out or data / "recogniser.safetensors"
    with Progress(transient=True) as bar:
        task = bar.add_task("recogniser", total=steps)
        recogniser = train_recogniser(wanted, steps=steps, seed=seed, progress=lambda done, total: bar.update(task, completed=done))
    save_recogniser(recogniser, path)
    info = recogniser.info
    typer.echo(f"{len(wanted)} characters, {info['renders']} renders in {len(info['fonts'])} fonts; "
               f"augmented training accuracy {info['train_accuracy_augmented']:.3f}. Saved {path}")


def _run_build(kind: str, builder: Callable[..., Any], out: Path, **options: Any) -> None:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    started = time.perf_counter()
    columns = (TextColumn(f"[bold]{kind}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=True)
    task = bar.add_task(kind, total=None)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:  # started on the first item, so that a bad option prints only its error line
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        result = builder(
            out, progress_fn=progress,
            message_fn=lambda message: console.print(f"warning: {message}", markup=False, highlight=False), **options,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    counts = " ".join(f"{split}={count}" for split, count in result.counts.items())
    skipped = sum(len(names) for names in result.skipped.values())
    typer.echo(f"{result.out}: {counts}" + (f"; skipped {skipped} (listed in the card)" if skipped else ""))
    if result.compared_with is not None:
        typer.echo(f"compared with {result.compared_with}: {'identical' if result.matches_compared else 'DIFFERENT'} content")
    typer.echo(f"content sha256 {result.card['content_sha256']} ({time.perf_counter() - started:.1f} s)")


# [eval-commands]

@bench_app.command("modes")
@user_errors
def bench_modes(
    dataset: str = typer.Option("all", "--dataset", help="ring, grid or all (both, one after the other)."),
    seeds: int = typer.Option(10, "--seeds", help="Seeds per row (0..N-1), trained together as one batched ensemble."),
    first_seed: int = typer.Option(0, "--first-seed", help="Start the seeds here instead of 0."),
    variants: str = typer.Option("scalar,siamese,selfcond", "--variants", help="Comma-separated rows to train."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Generator updates (default: the benchmark's 3000)."),
    radius: float = typer.Option(1.0, "--radius", help="Ring radius: the paper's stated 1 (its code used 2)."),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="Self-conditioning k (default: 16 ring, 50 grid)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for PyTorch."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every seed's numbers and the settings here."),
) -> None:
    """2D mode coverage: scalar vs Siamese vs Siamese + self-conditioning MLP GANs on Gaussian mixtures."""
    import json
    from dataclasses import asdict

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from travel.checkpoint import atomic_write_text
    from travel.errors import ConfigError
    from travel.modes import DATASETS, VARIANTS, benchmark_configs, format_table, run_benchmark, summarize

    names = list(DATASETS) if dataset == "all" else [dataset]
    rows_wanted = [v.strip() for v in variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in rows_wanted) or not rows_wanted:
        raise ConfigError(f"--variants takes a comma-separated subset of {','.join(VARIANTS)}, got {variants!r}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    overrides: dict[str, Any] = {"radius": radius}
    if steps is not None:
        overrides["steps"] = steps
    if clusters is not None:
        overrides["clusters"] = clusters
    # Every row of every dataset is checked before anything trains.
    plans = {name: benchmark_configs(name, rows_wanted, **overrides) for name in names}
    torch.set_num_threads(threads)
    seed_list = list(range(first_seed, first_seed + seeds))

    report: dict[str, Any] = {"seeds": seed_list, "datasets": {}}
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for name, configs in plans.items():
        first = next(iter(configs.values()))
        mixture = first.mixture
        with Progress(*columns, console=console, transient=True) as bar:
            tasks = {v: bar.add_task(f"{name} {v}", total=c.steps) for v, c in configs.items()}

            def progress(variant: str, step: int, total: int) -> None:
                if step % 50 == 0 or step == total:
                    bar.update(tasks[variant], completed=step)

            results = run_benchmark(configs, seeds=seed_list, progress_fn=progress)
        rows = summarize(results, num_modes=mixture.num_modes)
        where = f", r = {first.radius:g}" if name == "ring" else ""
        typer.echo(f"\n{name}: {mixture.num_modes} modes{where}, {len(seed_list)} seed(s), {first.steps} steps\n")
        typer.echo(format_table(rows, num_modes=mixture.num_modes))
        report["datasets"][name] = {
            "configs": {v: asdict(c) for v, c in configs.items()},
            "summary": [asdict(row) for row in rows],
            "runs": [asdict(result) for result in results],
        }
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
        typer.echo(f"\nwrote {json_out}")


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
    from travel.memory import parse_size

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
    path = Path(__file__).resolve().parent.parent / "apps" / "demo.py"
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
