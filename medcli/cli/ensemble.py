"""``medcli ensemble``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import paths
from ._app import app


@app.command("ensemble")
def ensemble_cli(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name in the results layout."),
    members: Optional[list[str]] = typer.Option(None, "--members", "-m", help="Member configurations <backbone>__<strategy> (repeatable) (default: every configuration of the seed)."),
    methods: list[str] = typer.Option(["greedy"], "--method", help="mean, weighted, vote, stacking or greedy (repeatable)."),
    seeds: list[int] = typer.Option([0], "--seed", help="Seed(s) whose runs are ensembled (repeatable)."),
    name: str = typer.Option("all", "--name", help="Name of the ensemble (its folder: ensembles/<name>__<method>/seed-<s>; the name may contain '__')."),
    results: Path = typer.Option(Path(paths.DEFAULT_RESULTS), "--results", help="Results root."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the test intervals."),
) -> None:
    """Ensembles of trained configurations, fitted on out-of-fold predictions and scored once on the test set."""
    from ..ensemble import build_ensemble, member_configs

    for seed in seeds:
        chosen = list(members) if members else member_configs(results, dataset, seed)
        for method in methods:
            summary = build_ensemble(results, dataset, chosen, method, seed, name=name, n_bootstrap=bootstrap)
            typer.echo(f"{paths.ensemble_name(name, method)} seed {seed}: {summary['statement']}")
