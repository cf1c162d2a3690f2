"""Command-line interface: a thin layer over the library (DESIGN §2).

Each area keeps its commands in its own module; importing them registers them on `app`.
User errors (`LongshortError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys

import typer

from longshort.cli import evaluate as _evaluate  # noqa: E402,F401
from longshort.cli import export as _export  # noqa: E402,F401
from longshort.cli import pipeline as _pipeline  # noqa: E402,F401
from longshort.cli import serve as _serve  # noqa: E402,F401

# Importing the area modules registers their commands.
from longshort.cli import solve as _solve  # noqa: E402,F401
from longshort.cli import thoughts as _thoughts  # noqa: E402,F401
from longshort.cli import train as _train  # noqa: E402,F401
from longshort.cli.app import app
from longshort.errors import LongshortError

_COMMAND: list = []


def _command():
    """The click command built from `app` (once: building it takes tens of milliseconds)."""
    if not _COMMAND:
        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `longshort` console command: returns the exit code. Every error a user
    can cause is one line on stderr (`error: ...`), never a traceback: usage errors (exit 2),
    `LongshortError` (exit 1), and files the system refuses (permissions, a full disk: exit 1)."""
    try:  # typer >= 0.2x vendors its own copy of click and raises that copy's exceptions
        from typer import _click as click
    except ImportError:  # pragma: no cover - older typer uses click itself
        import click

    command = _command()
    try:
        rv = command.main(args=argv, prog_name="longshort", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.ClickException as exc:
        msg = " ".join(exc.format_message().split())
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.exceptions.UsageError) and ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        print(f"error: {msg}{hint}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130
    except LongshortError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment refused: permissions, a full disk, a vanished file
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    if isinstance(rv, int) and not isinstance(rv, bool):  # an Exit code (e.g. --help: 0)
        if rv == 130:
            print("interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return rv
    return 0


if __name__ == "__main__":
    sys.exit(main())
