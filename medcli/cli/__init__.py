"""Command-line interface: ``medcli <command>``; see ``medcli --help``."""

from __future__ import annotations

from ._app import app
from . import data, ensemble, eval, export, gradcam, predict, report, split, train, weights  # noqa: F401  (each module registers its commands on ``app``)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
