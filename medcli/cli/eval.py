"""``medcli eval``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import app, print_error


@app.command("eval")
def eval_cli(
    run: list[Path] = typer.Argument(..., help="One or more run folders written by `medcli train` (each gets every option).",
                                   show_default=False),
    split: str = typer.Option("test", "--split", help="test, val or all."),
    tta: bool = typer.Option(False, "--tta", help="Average the predictions of the image and its horizontal flip."),
    data: Optional[Path] = typer.Option(None, "--data", help="External validation: score the run on another dataset (results kept apart)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the external dataset (default: its folder name)."),
    alias: Optional[list[str]] = opt.Alias,
    skip_bad: bool = opt.SkipBad,
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the figures."),
    figures_for: Optional[list[Path]] = typer.Option(None, "--figures-for", help="With several runs: write figures for these runs "
                                                     "only (repeatable; the workflow's eval.figures: first).", show_default=False),
    cache_dir: Optional[Path] = opt.CacheDir,
) -> None:
    """Predictions, metrics with bootstrap CIs, calibration and figures for trained runs.

    Several runs are evaluated one after the other in this one process; a run that fails is reported in one line, the others are still evaluated, and the exit code is 1.
    """
    from rich.console import Console

    from ..preflight import check_writable, run_folder

    check_writable([run_folder(r, "evaluate") for r in run if r.is_dir()])  # a missing or foreign folder: the run's own error
    from ..evaluation.runner import evaluate_run, evaluate_runs, render

    opt.setup()
    options = dict(split=split, tta=tta, data=data, name=name, aliases=opt.aliases(alias), skip_bad=skip_bad,
                   n_bootstrap=bootstrap, seed=seed, figures=figures, cache_dir=cache_dir)
    if len(run) == 1:
        if figures_for:
            options["figures"] = figures and os.path.abspath(run[0]) in {os.path.abspath(p) for p in figures_for}
        results = evaluate_run(run[0], **options)
        render(results, Console())
        typer.echo(f"metrics and predictions written under {run[0]}")
        return
    failed = []
    for run_dir, outcome in evaluate_runs(run, figures_for=figures_for, **options):
        typer.echo(f"== {run_dir}")
        if isinstance(outcome, str):
            print_error(outcome)
            failed.append(str(run_dir))
            continue
        render(outcome, Console())
        typer.echo(f"metrics and predictions written under {run_dir}")
    if failed:
        print_error(f"{len(failed)} of {len(run)} runs failed: {', '.join(failed)}")
        raise typer.Exit(1)
