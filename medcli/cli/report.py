"""``medcli report``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import paths
from ._app import app


@app.command("report")
def report_cli(
    results: Path = typer.Argument(Path(paths.DEFAULT_RESULTS), help="The results folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Markdown file (default: RESULTS/summary.md); the HTML page goes beside it."),
    primary: Optional[str] = typer.Option(None, "--primary", help="Primary metric (default: the experiment's, else balanced_accuracy)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Row compared with the others, <backbone>__<strategy> (default: customcnn__scratch)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the test intervals."),
) -> None:
    """The cross-validated comparison: summary.md (and as a page, summary.html), summary.csv, summary.json and figures."""
    from ..preflight import Output, check_writable

    if results.is_dir():  # else write_report's own error
        in_results = "make it writable, or report on a writable copy (the figures go to RESULTS/figures)"
        check_writable([Output(out, "--out") if out else Output(results, "results folder", in_results),
                        Output(paths.summary_figures_dir(results), "results folder", in_results)])
    from ..report.build import write_report

    path = write_report(results, out=out, primary=primary, reference=reference, n_bootstrap=bootstrap)
    typer.echo(f"summary written to {path}")
