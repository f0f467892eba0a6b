"""``medcli predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import app


@app.command("predict")
def predict_cli(
    model: Path = typer.Argument(..., metavar="MODEL", help="A run folder, a configuration's seed folder (its fold-<k>/ runs: the fold ensemble) "
                                           "or a `medcli ensemble` output folder.", show_default=False),
    inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help="Image or DICOM files, folders (read recursively) or CSV "
                                                                     "manifests (path[,label] columns).", show_default=False),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="The predictions CSV to write."),
    tta: bool = typer.Option(False, "--tta", help="Average the predictions of the image and its horizontal flip."),
    labels: Optional[bool] = typer.Option(None, "--labels/--no-labels", show_default=False,
                                          help="Score labelled input (one folder of class sub-folders, or a CSV with a label "
                                               "column) and write <out stem>.metrics.json (default: when the input looks labelled)."),
    alias: Optional[list[str]] = opt.Alias,
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals of labelled input (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    cache_dir: Optional[Path] = opt.CacheDir,
) -> None:
    """Predict new images with a trained model, exactly as it was trained and evaluated (preprocessing, calibration, threshold).

    One row per image: probabilities (calibrated and raw), the predicted class, the decision at the validation-fitted
    threshold (binary runs) and flags for images unlike the training images; unreadable files get an error row.
    """
    from rich.console import Console

    from ..prediction import predict, render

    opt.setup()
    result = predict(model, inputs, out, tta=tta, labels=labels, aliases=opt.aliases(alias), batch_size=batch_size,
                     n_bootstrap=bootstrap, seed=seed, cache_dir=cache_dir)
    render(result, Console())
