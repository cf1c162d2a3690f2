"""CLI commands: train (filled in by its area)."""

from longshort.cli.app import app  # noqa: F401
