"""`travel fit`: train a translator. Its model options come from travel.options, shared with `travel.fit`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from travel.cli.app import app
from travel.cli.common import user_errors
from travel.options import GROUPS, OPTIONS, RESUME_OPTIONS, fit_config  # light (no torch): the flags are built from it when the CLI loads


# ---------------------------------------------------------------------------------------------
# Options from the table: one typer parameter per travel.options.OPTIONS entry, in --help's groups.


def option_parameters(names: list[str]) -> list[inspect.Parameter]:
    """typer parameters for these OPTIONS: flag, default (from the config dataclasses), help and --help group."""
    parameters = []
    for name in names:
        option = OPTIONS[name]
        kind, default = option.type, option.default
        flag = option.flag_name
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        shown: Any = option.auto if default is None else True
        parameters.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind] if default is None else kind,
            default=typer.Option(default, *decls, help=option.help, rich_help_panel=option.group, show_default=shown),
        ))
    return parameters


def with_options(names: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command (taking **options) a parameter for each of these OPTIONS, after its own."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        every = own + option_parameters(names)

        def group(parameter: inspect.Parameter) -> int:  # --help shows the groups in GROUPS' order
            panel = getattr(parameter.default, "rich_help_panel", None)
            return GROUPS.index(panel) + 1 if panel in GROUPS else 0

        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.default is not inspect.Parameter.empty else p for p in every]
        command.__signature__ = signature.replace(parameters=sorted(keyword, key=group))  # type: ignore[attr-defined]
        return command

    return decorate


# ---------------------------------------------------------------------------------------------
# travel fit


@app.command()
@user_errors
@with_options(list(OPTIONS))
def fit(
    ctx: typer.Context,
    src: Optional[Path] = typer.Option(None, "--src", help="Folder of source-domain images (searched recursively).", rich_help_panel="Data"),
    dst: Optional[Path] = typer.Option(None, "--dst", help="Folder of target-domain images.", rich_help_panel="Data"),
    data: Optional[Path] = typer.Option(None, "--data", help="A folder in the CycleGAN layout (trainA/, trainB/).", rich_help_panel="Data"),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: runs/NAME/ and NAME.safetensors. Default: SRC2DST.", rich_help_panel="Run"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the run folder goes (default runs/NAME).", rich_help_panel="Run"),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the run in this folder (use --steps to extend it; --workers, --compile and "
        "--channels-last may change; other settings are the run's own).", rich_help_panel="Run"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a run folder that already holds a run.", rich_help_panel="Run"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit.", rich_help_panel="Run"),
    **options: Any,
) -> None:
    """Train a translator from --src images to --dst images."""
    from travel.compat import dump_run_config

    if resume is not None:
        from travel.train import resume_config

        # The run keeps its settings; these change how it runs (and how long), not what it computes.
        config = resume_config(resume, **{key: options[key] for key in RESUME_OPTIONS if _explicit(ctx, key)})
        run_dir = resume
    else:
        if not (src or dst or data):  # refused before anything is built (fit_config alone allows none, for benchmarks)
            from travel.data import resolve_domains

            resolve_domains(None, None, None)
        config = fit_config(src, dst, data=data, name=name, **options)
        run_dir = run_dir or Path("runs") / config.name
    if dry_run:
        typer.echo(dump_run_config(config))
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


