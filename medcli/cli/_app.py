"""The shared Typer app and the helpers every command uses.

Each command lives in its own module (``medcli/cli/<command>.py``): a Typer signature whose body parses
arguments and calls one plain library function. Heavy libraries (torch, sklearn) are imported inside the
command bodies so that ``medcli --help`` starts fast.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from ..errors import MedcliError, write_error


class _MedcliGroup(TyperGroup):
    """Turns :class:`MedcliError` into one red line on stderr and exit code 1 (no traceback), and so a write the
    file system refused (an ``OSError`` with an errno of :data:`medcli.errors.WRITE_ERRNOS`: disk full, quota,
    read-only, permission denied; also behind a ``RuntimeError``, as ``torch.save`` raises it). Every other
    exception is a bug in medcli and keeps its traceback."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MedcliError as exc:
            print_error(str(exc))
            raise typer.Exit(1) from None
        except (OSError, RuntimeError) as exc:
            error = write_error(exc)
            if error is None:
                raise
            print_error(str(error))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None


def print_error(message: str) -> None:
    from rich.console import Console

    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")


app = typer.Typer(
    name="medcli",
    cls=_MedcliGroup,
    help="Cross-validated transfer-learning experiments for medical image classification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at datasets and make synthetic ones.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"medcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Show the version and exit."),
) -> None:
    """medcli: reproducible, cross-validated transfer-learning experiments for medical images."""
