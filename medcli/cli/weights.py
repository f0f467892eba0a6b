"""``medcli weights download`` and ``medcli models``."""

from __future__ import annotations

from typing import Optional

import typer

from ._app import app

weights_app = typer.Typer(help="Pre-fetch pretrained weights (on a machine with internet, e.g. a login node).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("download")
def download_cli(
    names: list[str] = typer.Argument(
        ..., help="Backbone names: torchvision (resnet50), timm with a pretrained tag (convnext_tiny.fb_in22k) or hf-hub:ORG/NAME."
    ),
) -> None:
    """Download pretrained weights so offline compute nodes can use them.

    torchvision weights go to the torch cache ($TORCH_HOME); timm and Hugging Face Hub weights to the Hugging
    Face cache ($HF_HOME; gated models need HF_TOKEN). On compute nodes, use the same caches with HF_HUB_OFFLINE=1.
    """
    from ..models import download_weights

    for path in download_weights(names):
        typer.echo(f"cached: {path}")


@app.command("models")
def models_cli(
    search: Optional[str] = typer.Option(
        None, "--search", metavar="PATTERN",
        help="Search timm's full model list (wildcards *, ?; plain text matches anywhere), marking which have pretrained weights.",
    ),
) -> None:
    """List the registered backbones, a tested short list of timm backbones, heads and strategies."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if search is not None:
        from ..models.timm_backbones import search as search_timm

        rows = search_timm(search)
        table = Table(title=f"timm models matching {search!r} ({len(rows)})", title_justify="left")
        for col in ("name (--backbone)", "pretrained weights"):
            table.add_column(col)
        for name, has_weights in rows:
            table.add_row(name, "yes" if has_weights else "no (weights none only)")
        console.print(table)
        return

    from ..models import get_backbone, list_backbones, list_heads
    from ..models.timm_backbones import CURATED
    from ..models.weights import is_cached
    from ..strategies import get_strategy, list_strategies

    table = Table(title="backbones", title_justify="left")
    for col in ("name", "input", "interpolation", "ImageNet weights", "cached"):
        table.add_column(col)
    for name in list_backbones():
        info = get_backbone(name)
        cached = "-" if info.imagenet_weights is None else ("yes" if is_cached(name) else "no")
        table.add_row(name, str(info.input_size), info.interpolation, info.imagenet_weights or "-", cached)
    console.print(table)

    timm_table = Table(title="timm backbones (tested short list; any timm name or hf-hub:ORG/NAME works)", title_justify="left")
    timm_table.add_column("name", no_wrap=True)
    for col in ("kind", "input", "licence", "cached"):
        timm_table.add_column(col)
    for name, kind in CURATED:
        info = get_backbone(name)
        cached = "yes" if is_cached(name) else "no"
        timm_table.add_row(name, kind, str(info.input_size), info.license or "-", cached)
    console.print(timm_table)
    console.print("search all of timm: medcli models --search PATTERN (e.g. '*dinov2*')")
    console.print("heads: " + ", ".join(list_heads()))
    for name in list_strategies():
        console.print(f"strategy [bold]{name}[/]: {get_strategy(name).description}")
