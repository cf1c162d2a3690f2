"""Command-line interface: a thin layer over the library (DESIGN §2).

Each area keeps its commands in its own module; importing them registers them on `app`.
User errors (`LongshortError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys

import typer

from longshort.cli import evaluate as _evaluate  # noqa: E402,F401
from longshort.cli import pipeline as _pipeline  # noqa: E402,F401
from longshort.cli import serve as _serve  # noqa: E402,F401

# Importing the area modules registers their commands.
from longshort.cli import solve as _solve  # noqa: E402,F401
from longshort.cli import thoughts as _thoughts  # noqa: E402,F401
from longshort.cli import train as _train  # noqa: E402,F401
from longshort.cli.app import app
from longshort.errors import LongshortError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `longshort` console command."""
    command = typer.main.get_command(app)
    try:
        # standalone mode handles usage errors and --help itself (exit 2 / 0).
        command.main(args=argv, prog_name="longshort", standalone_mode=True)
    except LongshortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
