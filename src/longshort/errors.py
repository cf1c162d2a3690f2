"""User-facing errors.

Anything a user can fix (bad input file, unknown model spec, unreachable server) raises
`LongshortError`; the CLI prints its message on one line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class LongshortError(Exception):
    """An error caused by input or environment, with a message meant for the user."""


class InputError(LongshortError):
    """Bad input data: the message names the file, the line and the field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        self.message = message
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{fld}{message}")
