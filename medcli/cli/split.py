"""``medcli split``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import paths
from . import _options as opt
from ._app import app


@app.command("split")
def split_cli(
    data: Path = opt.DataArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"Where to write the splits (default: {paths.splits_file(paths.DEFAULT_RESULTS, '<dataset>')}, as `medcli train` reads them; <dataset> is the folder name or the manifest's file stem).", show_default=False),
    folds: int = typer.Option(5, "--folds", "-k", help="Cross-validation folds over train+val; 0 keeps the dataset's own train/val split."),
    seed: int = typer.Option(0, "--seed"),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out test share when the dataset has no test split."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="With --folds 0 and no val split: held-out validation share."),
    drop_test_duplicates: bool = typer.Option(False, "--drop-test-duplicates", help="Drop test images that duplicate development images (always reported)."),
    layout: str = opt.Layout,
    alias: Optional[list[str]] = opt.Alias,
    skip_bad: bool = opt.SkipBad,
    near_threshold: Optional[int] = opt.NearThreshold,
    cache_dir: Optional[Path] = opt.CacheDir,
    workers: Optional[int] = opt.Workers,
    window: Optional[str] = opt.Window,
    frame: Optional[int] = opt.Frame,
    group_by: Optional[str] = opt.GroupBy,
    allow_missing_classes: bool = opt.AllowMissingClasses,
) -> None:
    """Make deterministic, leak-free cross-validation splits (duplicates and patient groups never straddle folds)."""
    from ..preflight import Output, check_writable
    from ..splits import split_data, summarize

    opt.setup()
    if out is None:
        out = Path(paths.splits_file(paths.DEFAULT_RESULTS, paths.dataset_name(data)))
    check_writable([Output(out, "--out")])
    doc = split_data(
        data, out, layout=layout, aliases=opt.aliases(alias), folds=folds, seed=seed, test_fraction=test_fraction,
        val_fraction=val_fraction, drop_test_duplicates=drop_test_duplicates, skip_bad=skip_bad,
        near_threshold=near_threshold, cache_dir=cache_dir, workers=workers, allow_missing_classes=allow_missing_classes,
        decode=opt.decode(window, frame), group_by=opt.group_by(group_by),
    )
    typer.echo(summarize(doc))
    typer.echo(f"splits written to {out}")
