"""``medcli train``: one command-line option per field of the settings schema (``medcli.training.config``).

The options are generated from :class:`~medcli.training.config.TrainConfig`, so a new setting is one schema
field. Every option defaults to "not given"; the value used is the option's, else the ``--config`` file's,
else the schema default (shown in the help).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from ..training import config as schema_lib
from . import _options as opt
from ._app import app

# Python parameter names that would shadow a builtin or read badly.
_PARAM = {"compile": "compile_model"}
_PYTHON_TYPES = {"str": str, "int": int, "float": float, "bool": bool}  # schema kind -> option type


def _option(name: str, s: schema_lib.Setting) -> tuple[type, typer.models.OptionInfo]:
    kind = schema_lib.kind_of(name)
    flag = schema_lib.option_name(name)
    decls = [f"{flag}/--no-{flag[2:]}" if kind == "bool" else flag] + ([s.short] if s.short else [])
    option = typer.Option(None, *decls, help=opt.setting_help(name), show_default=False, rich_help_panel=s.group)
    return (Optional[list[str]] if kind == "dict" else Optional[_PYTHON_TYPES[kind]]), option  # dict: --alias RAW=CLASS, repeatable


def settings_from_options(values: dict) -> dict:
    """The settings given on the command line: ``{field: value}`` for the options that were given."""
    given: dict = {}
    for name, s in schema_lib.schema().items():
        value = values.get(_PARAM.get(name, name))
        if value is None:
            continue
        if schema_lib.kind_of(name) == "dict":
            value = opt.aliases(value)
            if not value:
                continue
        given[name] = schema_lib.check_value(name, value, schema_lib.option_name(name))
    return given


def train_cli(config: Optional[Path] = None, **values) -> None:
    """Train one model: a backbone with a transfer-learning strategy on one fold and seed.

    Settings come from the options, else from --config FILE (YAML or JSON with any subset of the settings, or a run's config.json to re-run it), else the defaults shown.
    """
    from ..training import train

    opt.setup()
    settings = schema_lib.read_settings(config) if config is not None else {}
    settings.update(settings_from_options(values))
    summary = train(schema_lib.from_dict(settings))
    if summary["main_process"]:
        typer.echo(f"best epoch {summary['best_epoch']} ({summary['monitor']} {summary['best_score']:.4f}); run folder: {summary['out']}")


@app.command("recipes")
def recipes_cli() -> None:
    """List the training recipes (--recipe NAME): what each sets and where it comes from (docs/recipes.md)."""
    from rich.console import Console
    from rich.table import Table

    from ..training.recipes import get_recipe, list_recipes

    table = Table(title="recipes (medcli train --recipe NAME; options given explicitly override a recipe)", title_justify="left")
    for col in ("name", "what", "settings", "source"):
        table.add_column(col)
    for name in list_recipes():
        r = get_recipe(name)
        settings = ", ".join(_shown(k, v) for k, v in r.settings.items()) or "the defaults"
        table.add_row(name, r.description, settings, r.source or "-")
    Console().print(table)


def _shown(name: str, value) -> str:
    """A setting as the option that gives it: ``--epochs 100``, ``--no-augment``."""
    flag = schema_lib.option_name(name)
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _signature() -> inspect.Signature:
    params = [inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--config", "-c", help="YAML or JSON file of settings (any subset; a run's config.json re-runs it). "
                             "Options given on the command line override it.", show_default=False, rich_help_panel=schema_lib.DATA),
    )]
    for name, s in schema_lib.schema().items():
        annotation, option = _option(name, s)
        params.append(inspect.Parameter(_PARAM.get(name, name), inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option))
    return inspect.Signature(params)


train_cli.__signature__ = _signature()  # type: ignore[attr-defined]
train_cli.__annotations__ = {p.name: p.annotation for p in train_cli.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command("train")(train_cli)
