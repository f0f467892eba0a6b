"""``medcli train``: one command-line option per field of the settings schema (``medcli.training.config``).

The options are generated from :class:`~medcli.training.config.TrainConfig`, so a new setting is one schema
field. Every option defaults to "not given"; the value used is the option's, else the ``--config`` file's,
else its environment variable's (``MEDCLI_TRACK``, ``MEDCLI_TRACK_DIR``), else the schema default (shown in the help).
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
_CELLS = "Several cells in one process"
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


def train_cli(config: Optional[Path] = None, cells: Optional[Path] = None, cells_at_once: int = 1, logs: Optional[Path] = None,
              **values) -> None:
    """Train one model: a backbone with a transfer-learning strategy on one fold and seed (or, with --cells FILE, several in one process).

    Settings come from the options, else from --config FILE (YAML or JSON with any subset of the settings, or a run's config.json to re-run it), else the defaults shown. With --cells, each cell's settings come from its entry in the file, on top of --config and under the options.
    """
    opt.setup()
    settings = {**schema_lib.settings_from_env(), **(schema_lib.read_settings(config) if config is not None else {})}
    given = settings_from_options(values)
    from ..preflight import check_train

    if cells is None:
        from ..training import train

        cfg = schema_lib.from_dict({**settings, **given})
        check_train([cfg])
        summary = train(cfg)
        if summary["main_process"]:
            typer.echo(f"best epoch {summary['best_epoch']} ({summary['monitor']} {summary['best_score']:.4f}); run folder: {summary['out']}")
        return
    from ..training.cells import train_cells

    entries = schema_lib.read_cells(cells)
    cfgs = [schema_lib.from_dict({**settings, **entry, **given}, f"{cells}: cell {k + 1}: ") for k, entry in enumerate(entries)]
    check_train(cfgs, logs)
    results = train_cells(cfgs, at_once=cells_at_once, logs=logs)
    _print_cells(results)
    failed = [r for r in results if not r.ok]
    if failed:
        from ..errors import MedcliError

        raise MedcliError(f"{len(failed)} of {len(results)} cells failed: " + "; ".join(f"{r.out}: {r.error}" for r in failed))


def _print_cells(results) -> None:
    """One line per cell: run folder, what happened, best epoch and score, seconds."""
    for r in results:
        best = f"best epoch {r.summary['best_epoch']} ({r.summary['monitor']} {r.summary['best_score']:.4f})" if r.summary else r.error
        typer.echo(f"{r.status:<9} {r.seconds:7.1f} s  {r.out}  {best}")


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
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("config", keyword, annotation=Optional[Path], default=typer.Option(
            None, "--config", "-c", help="YAML or JSON file of settings (any subset; a run's config.json re-runs it). "
            "Options given on the command line override it.", show_default=False, rich_help_panel=schema_lib.DATA)),
        inspect.Parameter("cells", keyword, annotation=Optional[Path], default=typer.Option(
            None, "--cells", help="Train several cells (runs) in this process: a YAML or JSON list, each entry what a --config file holds. "
            "A cell that fails does not stop the others; a rerun after a failure or a kill restores the cells that had finished.",
            show_default=False, rich_help_panel=_CELLS)),
        inspect.Parameter("cells_at_once", keyword, annotation=int, default=typer.Option(
            1, "--cells-at-once", min=1, help="With --cells: how many cells train at the same time, in worker processes sharing "
            "this job's GPU and CPU threads.", rich_help_panel=_CELLS)),
        inspect.Parameter("logs", keyword, annotation=Optional[Path], default=typer.Option(
            None, "--cell-logs", help="With --cells: also write each cell's log to DIR/train/<dataset>/<run>.log (the workflow's logs folder).",
            show_default=False, rich_help_panel=_CELLS)),
    ]
    for name, s in schema_lib.schema().items():
        annotation, option = _option(name, s)
        params.append(inspect.Parameter(_PARAM.get(name, name), inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option))
    return inspect.Signature(params)


train_cli.__signature__ = _signature()  # type: ignore[attr-defined]
train_cli.__annotations__ = {p.name: p.annotation for p in train_cli.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command("train")(train_cli)
