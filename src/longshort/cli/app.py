"""The typer application object; area modules register their commands on it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="longshort",
    help="Long⊗Short: efficient reasoning with a long-thought and a short-thought model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Long⊗Short: efficient reasoning with a long-thought and a short-thought model."""


@app.command()
def version() -> None:
    """Print the installed longshort version."""
    from longshort import __version__

    print(__version__)
