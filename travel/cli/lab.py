"""`travel eval`, `travel bench` and `travel data`: the lab's commands (scores, speed, benchmark datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from travel.cli.app import app, bench_app, data_app
from travel.cli.common import user_errors
from travel.cli.fit import with_options
from travel.options import BENCH_OPTIONS, fit_config


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
    from travel.lab.evaluate import EvalSettings, default_output_path, evaluate, format_table, write_report

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
@with_options(list(BENCH_OPTIONS))
def bench_speed(
    steps: int = typer.Option(10, "--steps", help="Timed training steps (the median is reported)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed steps first."),
    profile: bool = typer.Option(False, "--profile/--no-profile", help="Also print torch.profiler's top operators for inference and one training step."),
    matmul_size: Optional[int] = typer.Option(None, "--matmul-size", help="Side of the peak matmul (default 2048 CPU, 8192 CUDA)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also save the numbers as JSON here."),
    **options: Any,
) -> None:
    """Training images/s, inference ms/image, peak memory, FLOPs and share of a matmul peak on this device, of the
    model `travel fit` trains from the same options (grouped as in `travel fit --help`)."""
    import json

    import torch

    from travel.checkpoint import atomic_write_text
    from travel.errors import ConfigError
    from travel.lab.speed import SpeedSettings, format_profile, format_report, run_speed

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    settings = SpeedSettings(steps=steps, warmup=warmup, profile=profile, matmul_size=matmul_size)
    report = run_speed(fit_config(name="bench", **options), settings, say=lambda message: typer.echo(f"measuring {message}", err=True))
    typer.echo(format_report(report))
    if profile:
        typer.echo("\n" + format_profile(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        typer.echo(f"saved {json_path}")


# travel data glyphs / travel data emoji: the benchmark datasets (builders in travel/lab/datasets.py)


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
    from travel.lab.datasets import build_glyphs

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
    from travel.lab.datasets import build_emoji

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

    from travel.lab.recogniser import dataset_characters, save_recogniser, train_recogniser

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
    from travel.lab.modes import DATASETS, VARIANTS, benchmark_configs, format_table, run_benchmark, summarize

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


