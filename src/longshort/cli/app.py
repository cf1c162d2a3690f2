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


def config_option(model: type, field: str, *decls: str, help: str, **kw: object) -> object:
    """A typer option for a stage config's `field` whose default is the config's own: the flag
    defaults to None ("not given", so the config's value applies) and its help names that value,
    read from the config class, so a default lives in one place.

    >>> from pydantic import BaseModel
    >>> class C(BaseModel):
    ...     rollouts: int = 5
    >>> config_option(C, "rollouts", help="Continuations per prefix.").help
    'Continuations per prefix. (default: 5)'
    """
    info = model.model_fields[field]  # type: ignore[attr-defined]
    default = info.get_default(call_default_factory=True)
    return typer.Option(None, *decls, help=f"{help} (default: {default})", show_default=False, **kw)


def given(**options: object) -> dict[str, object]:
    """The options a user gave (not None): the overrides of a stage config.

    >>> given(rollouts=None, delta=0.5)
    {'delta': 0.5}
    """
    return {k: v for k, v in options.items() if v is not None}
