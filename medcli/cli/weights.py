"""``medcli weights download`` and ``medcli models``."""

from __future__ import annotations

import typer

from ._app import app

weights_app = typer.Typer(help="Pre-fetch pretrained weights (on a machine with internet, e.g. a login node).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("download")
def download_cli(
    names: list[str] = typer.Argument(..., help="Backbone names, e.g. resnet50 densenet121."),
) -> None:
    """Download ImageNet weights into the torch cache ($TORCH_HOME) so offline compute nodes can use them."""
    from ..models import download_weights

    for path in download_weights(names):
        typer.echo(f"cached: {path}")


@app.command("models")
def models_cli() -> None:
    """List the registered backbones, heads and strategies."""
    from rich.console import Console
    from rich.table import Table

    from ..models import get_backbone, list_backbones, list_heads
    from ..models.weights import is_cached
    from ..strategies import get_strategy, list_strategies

    table = Table(title="backbones", title_justify="left")
    for col in ("name", "input", "interpolation", "ImageNet weights", "cached"):
        table.add_column(col)
    for name in list_backbones():
        info = get_backbone(name)
        cached = "-" if info.imagenet_weights is None else ("yes" if is_cached(name) else "no")
        table.add_row(name, str(info.input_size), info.interpolation, info.imagenet_weights or "-", cached)
    console = Console()
    console.print(table)
    console.print("heads: " + ", ".join(list_heads()))
    for name in list_strategies():
        console.print(f"strategy [bold]{name}[/]: {get_strategy(name).description}")
