"""``medcli eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import app


@app.command("eval")
def eval_cli(
    run: Path = typer.Argument(..., help="A run folder written by `medcli train`."),
    split: str = typer.Option("test", "--split", help="test, val or all."),
    tta: bool = typer.Option(False, "--tta", help="Average the predictions of the image and its horizontal flip."),
    data: Optional[Path] = typer.Option(None, "--data", help="External validation: score the run on another dataset (results kept apart)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the external dataset (default: its folder name)."),
    alias: Optional[list[str]] = opt.Alias,
    skip_bad: bool = opt.SkipBad,
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the figures."),
) -> None:
    """Predictions, metrics with bootstrap CIs, calibration and figures for a trained run."""
    from rich.console import Console

    from ..evaluation.runner import evaluate_run, render

    opt.setup()
    results = evaluate_run(run, split=split, tta=tta, data=data, name=name, aliases=opt.aliases(alias), skip_bad=skip_bad,
                           n_bootstrap=bootstrap, seed=seed, figures=figures)
    render(results, Console())
    typer.echo(f"metrics and predictions written under {run}")
