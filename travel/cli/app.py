"""The `travel` command and its sub-command groups; the commands register themselves from their modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="travel",
    help="Unpaired image-to-image translation: train on two folders of images, translate new ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


bench_app = typer.Typer(help="Benchmarks: training and inference speed, 2D mode coverage.", no_args_is_help=True)
data_app = typer.Typer(help="Build benchmark datasets from registry packages.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
