"""``medcli data inspect`` and ``medcli data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import data_app


@data_app.command("inspect")
def inspect_cli(
    data: Path = opt.DataArg,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report (every duplicate group) as JSON."),
    layout: str = opt.Layout,
    alias: Optional[list[str]] = opt.Alias,
    near_threshold: Optional[int] = opt.NearThreshold,
    cache_dir: Optional[Path] = opt.CacheDir,
    workers: Optional[int] = opt.Workers,
    contact_sheet: Optional[Path] = typer.Option(None, "--contact-sheet", help="Also write a PNG contact sheet of the duplicate groups (label conflicts, groups across splits, the largest) to judge by eye."),
    window: Optional[str] = opt.Window,
    frame: Optional[int] = opt.Frame,
    group_by: Optional[str] = opt.GroupBy,
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when there are unreadable files, label conflicts or duplicates across splits (for CI); the report is still shown and written."),
) -> None:
    """Show what is in a dataset: classes per split, sizes, modes, unreadable files, duplicates and label conflicts."""
    from rich.console import Console

    from .._io import write_json
    from ..data import inspect_data
    from ..data.inspect import render_report, strict_problems
    from ..errors import MedcliError
    from ..preflight import Output, check_writable

    opt.setup()
    check_writable([Output(path, option) for path, option in ((json_out, "--json"), (contact_sheet, "--contact-sheet")) if path])
    report = inspect_data(data, layout=layout, aliases=opt.aliases(alias), near_threshold=opt.near_threshold(near_threshold), cache_dir=cache_dir, workers=workers,
                          contact_sheet=contact_sheet, decode=opt.decode(window, frame), group_by=opt.group_by(group_by))
    render_report(report, Console())
    if json_out:
        write_json(json_out, report)
        typer.echo(f"report written to {json_out}")
    problems = strict_problems(report) if strict else []
    if problems:
        raise MedcliError(f"--strict: {'; '.join(problems)}")


@data_app.command("synth")
def synth_cli(
    out: Path = typer.Argument(..., help="Folder to create."),
    layout: str = typer.Option("imagefolder", help="imagefolder, presplit, csv or npz."),
    classes: int = typer.Option(3, "--classes", help="Number of classes (2-8)."),
    per_class: int = typer.Option(40, "--per-class", help="Images per class."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    channels: int = typer.Option(1, "--channels", help="1 (grayscale) or 3 (RGB)."),
    signal: str = typer.Option("mixed", "--signal", help="What differs between classes: mixed, shape, location or texture."),
    noise: float = typer.Option(0.15, "--noise", help="Gaussian noise sd (image range 0-1)."),
    per_group: int = typer.Option(1, "--per-group", help="Similar images per patient group (csv layout records the group)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Make a learnable synthetic dataset (for tests, demos and sanity checks)."""
    from ..data.synth import make_synthetic

    path = make_synthetic(out, layout=layout, n_classes=classes, per_class=per_class, size=size, channels=channels, signal=signal, noise=noise, per_group=per_group, seed=seed, overwrite=overwrite)
    typer.echo(f"synthetic dataset written: {path}")
