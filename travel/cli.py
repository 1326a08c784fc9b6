"""The `travel` command line: fit, translate and friends. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

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
    src: Optional[Path] = typer.Option(None, "--src", help="Folder of source-domain images (searched recursively)."),
    dst: Optional[Path] = typer.Option(None, "--dst", help="Folder of target-domain images."),
    data: Optional[Path] = typer.Option(None, "--data", help="A folder in the CycleGAN layout (trainA/, trainB/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: runs/NAME/ and NAME.safetensors. Default: SRC2DST."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the run folder goes (default runs/NAME)."),
    steps: int = typer.Option(10_000, "--steps", help="Generator updates."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per domain per step (>= 2)."),
    size: int = typer.Option(128, "--size", help="Training crop, in pixels."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Shorter side before cropping (default about 1.12 x size)."),
    lr_g: float = typer.Option(1e-4, "--lr-g", help="Generator learning rate (TTUR)."),
    lr_d: float = typer.Option(4e-4, "--lr-d", help="Discriminator learning rate (TTUR)."),
    d_steps: int = typer.Option(1, "--d-steps", help="Discriminator updates per generator update."),
    vec_len: int = typer.Option(128, "--vec-len", help="Length of the discriminator's output vector."),
    siamese: str = typer.Option("shared", "--siamese", help="shared: S is the discriminator; separate: S is its own network."),
    channels: int = typer.Option(32, "--channels", help="Generator and discriminator width at full resolution."),
    depth: int = typer.Option(4, "--depth", help="Generator and discriminator downsamplings."),
    travel_weight: float = typer.Option(10.0, "--travel-weight", help="Weight of the TraVeL content loss."),
    r1: float = typer.Option(0.0, "--r1", help="R1 gradient penalty weight on real images (0 = off)."),
    rotation: bool = typer.Option(False, "--rotation/--no-rotation", help="Self-supervised rotation loss (SS-GAN)."),
    rotation_d: float = typer.Option(1.0, "--rotation-d", help="Discriminator's rotation loss weight (beta)."),
    rotation_g: float = typer.Option(0.2, "--rotation-g", help="Generator's rotation loss weight (alpha)."),
    rotation_decay: bool = typer.Option(True, "--rotation-decay/--no-rotation-decay", help="Decay alpha linearly to 0."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Differentiable augmentation for the discriminator."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same run."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), fp32, bf16 or fp16."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    cache: bool = typer.Option(False, "--cache/--no-cache", help="Keep decoded images in memory."),
    log_every: int = typer.Option(10, "--log-every", help="Steps between metrics.jsonl lines."),
    sample_every: int = typer.Option(500, "--sample-every", help="Steps between sample grids."),
    save_every: int = typer.Option(1000, "--save-every", help="Steps between saves of the resume state and weights."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder (use --steps to extend it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit."),
) -> None:
    """Train a translator from --src images to --dst images."""
    from dataclasses import replace

    from travel.config import (
        DataConfig, DiscriminatorConfig, FitConfig, GeneratorConfig, LossConfig, ModelConfig, TrainConfig,
        attention_levels_for, to_json,
    )
    from travel.data import resolve_domains

    if resume is not None:
        from travel.train import resume_config

        explicit_steps = _explicit("--steps")
        config = resume_config(resume, steps=steps if explicit_steps else None, workers=workers if _explicit("--workers") else None)
        run_dir = resume
    else:
        source, target = resolve_domains(str(src) if src else None, str(dst) if dst else None, str(data) if data else None)
        name = name or f"{source.resolve().name}2{target.resolve().name}"
        generator = GeneratorConfig(base_channels=channels, depth=depth, attention_levels=attention_levels_for(size, depth))
        discriminator = DiscriminatorConfig(
            base_channels=channels, depth=depth, attention_level=min(2, depth), vec_len=vec_len, rotation_head=rotation
        )
        config = FitConfig(
            name=name,
            model=ModelConfig(generator=generator, discriminator=discriminator, siamese=siamese),  # type: ignore[arg-type]
            loss=LossConfig(
                travel=travel_weight, r1_gamma=r1, rotation_d=rotation_d if rotation else 0.0, rotation_g=rotation_g,
                rotation_g_decay=rotation_decay,
            ),
            data=DataConfig(
                source=str(source.resolve()), target=str(target.resolve()),
                load_size=load_size if load_size is not None else max(size, round(size * 1.12)), crop_size=size,
                augment=augment, workers=workers, cache=cache,
            ),
            train=TrainConfig(
                steps=steps, batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, d_steps=d_steps, seed=seed,
                device=device, precision=precision, log_every=log_every, sample_every=sample_every,  # type: ignore[arg-type]
                save_every=save_every,
            ),
        )
        config = replace(config)
        run_dir = run_dir or Path("runs") / config.name
    if dry_run:
        typer.echo(to_json(config))
        return
    _run_fit(config, run_dir, resume=resume is not None)


def _explicit(flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in sys.argv[1:])


def _run_fit(config: Any, run_dir: Path, *, resume: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from travel.train import fit as fit_run

    console = Console(stderr=True)
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

        result = fit_run(config, run_dir, resume=resume, progress_fn=progress, message_fn=console.print)
    if result.interrupted:
        typer.echo(f"stopped at step {result.step}; state saved. Continue with: travel fit --resume {result.run_dir}", err=True)
        raise typer.Exit(130)
    skipped = f"; skipped {len(result.skipped_images)} unreadable image(s)" if result.skipped_images else ""
    typer.echo(f"done: {result.step} steps{skipped}. Weights: {result.weights}")


# ---------------------------------------------------------------------------------------------
# travel translate


@app.command()
@user_errors
def translate(
    inputs: list[Path] = typer.Argument(..., help="Image files to translate."),
    ckpt: str = typer.Option(..., "--ckpt", help="A .safetensors file, a run folder, or a checkpoint name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: beside each input)."),
    size: Optional[int] = typer.Option(None, "--size", help="Resize the shorter side to this first."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
) -> None:
    """Translate images with a trained checkpoint; writes NAME.CKPT.png beside each input."""
    from travel.checkpoint import atomic_path
    from travel.data import load_image
    from travel.inference import Translator

    translator = Translator.from_pretrained(ckpt, device=device)
    for path in inputs:
        result = translator(load_image(path), size=size)
        folder = out or path.parent
        target = folder / f"{path.stem}.{translator.name}.png"
        with atomic_path(target) as tmp:
            result.save(tmp, format="PNG")
        typer.echo(str(target))


# ---------------------------------------------------------------------------------------------
# Sub-command groups. Each command imports what it needs inside its body, so `travel --help` is fast.

bench_app = typer.Typer(help="Benchmarks: speed, 2D mode coverage.", no_args_is_help=True)
data_app = typer.Typer(help="Build benchmark datasets from registry packages.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")

# [translate-commands]

# [eval-commands]

# [bench-modes-command]

# [demo-command]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
