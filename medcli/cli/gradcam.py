"""``medcli gradcam``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import app


@app.command("gradcam")
def gradcam_cli(
    run: Path = typer.Argument(..., help="A run folder written by `medcli train`."),
    split: str = typer.Option("test", "--split", help="test (needs `medcli eval RUN` first) or val."),
    n: int = typer.Option(16, "--n", help="Images per class, half correctly and half wrongly classified where possible."),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam or scorecam."),
    target: str = typer.Option("pred", "--target", help="Explain the predicted class (pred) or the true class (true)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per CAM batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image selection."),
    cache_dir: Optional[Path] = opt.CacheDir,
) -> None:
    """Grad-CAM overlays, per-class galleries and a faithfulness score for a trained run."""
    from ..preflight import check_writable, run_folder

    if run.is_dir():  # a missing or foreign folder: the run's own error
        check_writable([run_folder(run, "explain")])
    from ..gradcam import explain_run, summarize

    opt.setup()
    result = explain_run(run, split=split, n=n, method=method, target=target, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
    typer.echo(summarize(result))
