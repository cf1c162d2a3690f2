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
def version(packages: bool = typer.Option(False, "--packages", "-p", help="also the versions of the packages "
                                          "that can change results (torch, transformers, trl, vLLM, ...)")) -> None:
    """Print the installed longshort version (docs/install.md: which combinations are tested)."""
    from longshort import __version__

    print(__version__)
    if packages:
        from longshort.rundir import package_versions

        for name, v in package_versions().items():
            if name != "longshort":
                print(f"{name} {v}")


def config_option(model: type, field: str, *decls: str, help: str, annotated: bool = False,
                  **kw: object) -> object:
    """A typer option for a stage config's `field` whose default is the config's own: the flag
    defaults to None ("not given", so the config's value applies) and its help names that value,
    read from the config class, so a default lives in one place. `annotated`: for
    ``Annotated[T, config_option(...)] = None`` parameters (typer then takes no default here).

    >>> from pydantic import BaseModel
    >>> class C(BaseModel):
    ...     rollouts: int = 5
    >>> config_option(C, "rollouts", help="Continuations per prefix.").help
    'Continuations per prefix. (default: 5)'
    """
    default = config_default(model, field)
    text = help if default is None else f"{help} (default: {default})"  # None: `help` says what applies
    if annotated:
        return typer.Option(*decls, help=text, show_default=False, **kw)
    return typer.Option(None, *decls, help=text, show_default=False, **kw)


def config_default(model: type, field: str) -> object:
    """The default of a config's `field`; a dotted name reaches into a nested config
    ("dialogue.max_turns": the `max_turns` of the `dialogue` field's default).

    >>> from pydantic import BaseModel, Field
    >>> class Inner(BaseModel):
    ...     turns: int = 4
    >>> class Outer(BaseModel):
    ...     inner: Inner = Field(default_factory=lambda: Inner(turns=2))
    >>> config_default(Outer, "inner.turns")
    2
    """
    head, _, rest = field.partition(".")
    value = model.model_fields[head].get_default(call_default_factory=True)  # type: ignore[attr-defined]
    for part in rest.split(".") if rest else ():
        value = getattr(value, part)
    return value


def given(**options: object) -> dict[str, object]:
    """The options a user gave (not None): the overrides of a stage config. A number that is not
    finite (``--delta inf``, ``--temperature nan``) is refused, naming the option (see `finite`).

    >>> given(rollouts=None, delta=0.5)
    {'delta': 0.5}
    """
    finite(**options)
    return {k: v for k, v in options.items() if v is not None}


def finite(**options: object) -> None:
    """Refuse a float option that is NaN or infinite, naming it as the user typed it (``--top-p``):
    typer parses ``inf``/``nan`` as floats, and a config's ``gt=0`` or ``ge=0`` bound lets ``inf``
    through (a learning rate, a timeout that never ends, a threshold no score reaches).

    >>> finite(lr=1e-5, seed=None)
    >>> finite(lr=float("inf"))
    Traceback (most recent call last):
    ...
    longshort.errors.InputError: field '--lr': expected a finite number, got inf
    """
    import math

    from longshort.errors import InputError

    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"expected a finite number, got {value}", field="--" + name.replace("_", "-"))


def check_urls(engine: str | None, **urls: str | None) -> None:
    """Server URL options (``--base-url``, ``--long-base-url``, ...): with ``--engine openai`` each
    given one must be a server URL; with another engine none may be given (it would be ignored)."""
    from longshort.errors import InputError
    from longshort.io import check_url

    for name, url in urls.items():
        if url is None:
            continue
        option = "--" + name.replace("_", "-")
        if engine != "openai":
            raise InputError(f"only used with --engine openai (engine is {engine!r})", field=option)
        check_url(url, field=option)
