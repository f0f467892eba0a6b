"""``medcli export``."""

from __future__ import annotations

from pathlib import Path

import typer

from . import _options as opt
from ._app import app


@app.command("export")
def export_cli(
    model: Path = typer.Argument(..., help="A run folder written by `medcli train` (run `medcli eval RUN --split all` first "
                                           "so that the temperature and threshold are exported too)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path = typer.Option(..., "--out", help="Folder to write model.onnx|model.ts, preprocess.json and model_card.md into "
                                                "(new or empty, or an earlier export, which is replaced)."),
) -> None:
    """Export a run's network (logits out) with its preprocessing contract, after a parity check; write its model card."""
    from ..export import export_model, summarize

    opt.setup()
    typer.echo(summarize(export_model(model, fmt, out)))
