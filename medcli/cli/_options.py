"""Options shared by several commands (one definition each)."""

from __future__ import annotations

from typing import Optional

import typer

DataArg = typer.Argument(..., help="Dataset: a folder (class folders, or train/val/test folders), a .csv manifest or a .npz file.", show_default=False)
Layout = typer.Option("auto", "--layout", help="auto, imagefolder, presplit, csv or npz.")
Alias = typer.Option(None, "--alias", help="Rename a class: RAW=CLASS (repeatable). Applied before automatic matching.")
NearThreshold = typer.Option(None, "--near-threshold", help="Max distance (bits of a 256-bit perceptual hash) for near-duplicates (default: 40).")
CacheDir = typer.Option(None, "--cache-dir", help="Where decoded-image caches live (default: $MEDCLI_CACHE or ~/.cache/medcli).")
Workers = typer.Option(None, "--workers", help="Decoding processes (default: the CPUs available).")
SkipBad = typer.Option(False, "--skip-bad", help="Leave unreadable image files out (and say how many) instead of stopping.")


def setting_help(name: str) -> str:
    """The ``--help`` text of training setting ``name``: its schema help, allowed values and default, so every
    option that sets it (``medcli train``, ``split``, ``data inspect``) is described once."""
    from ..training.config import default_of, kind_of, schema

    s = schema()[name]
    text = s.help
    if s.choices is not None and kind_of(name) == "str":
        text += f" One of: {', '.join(map(str, s.choices))}."
    if s.default_text:
        default = s.default_text
    else:
        value = default_of(name)
        default = ("on" if value else "off") if isinstance(value, bool) else str(value)
    if s.env:
        default += f"; env {s.env}"
    return text + (f" ({default})" if default.startswith("required") else f" (default: {default})")


Window = typer.Option(None, "--window", help=setting_help("window"), show_default=False)
Frame = typer.Option(None, "--frame", help=setting_help("frame"), show_default=False)
GroupBy = typer.Option(None, "--group-by", help=setting_help("group_by"), show_default=False)
AllowMissingClasses = typer.Option(False, "--allow-missing-classes", help=setting_help("allow_missing_classes"))


def setup(verbose: bool = False) -> None:
    from ..progress import setup_logging

    setup_logging(verbose)


def near_threshold(value: Optional[int]) -> int:
    from ..data.duplicates import DEFAULT_NEAR_THRESHOLD

    return DEFAULT_NEAR_THRESHOLD if value is None else value


def aliases(items: Optional[list[str]]) -> dict[str, str]:
    from ..data.classes import parse_aliases

    return parse_aliases(items)


def decode(window: Optional[str], frame: Optional[int]):
    """``--window``/``--frame`` as :class:`~medcli.data.decode.DecodeOptions` (one-line errors for bad values)."""
    from ..data.decode import DecodeOptions

    options = DecodeOptions(window=window, frame=frame)
    options.validate()
    return options


def group_by(value: Optional[str]) -> Optional[str]:
    from ..training.config import check_value

    return check_value("group_by", value, "--group-by")
