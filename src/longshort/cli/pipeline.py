"""CLI command `longshort pipeline`: the whole recipe in one command (see docs/pipeline.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from longshort.cli.app import app


@app.command()
def pipeline(
    config: Path = typer.Argument(..., help="recipe YAML (configs/smoke.yaml, configs/quickstart.yaml, ...)"),
    out: Path = typer.Option(None, "--out", help="run directory (default runs/<name from the recipe>)"),
    resume: bool = typer.Option(False, "--resume", help="continue a run: skip finished stages, resume the "
                                "unfinished one"),
    check: bool = typer.Option(False, "--check", help="only validate the recipe and print it resolved"),
) -> None:
    """Run data → chunk → score → coldstart → sft → rl → eval → report from one recipe."""
    from longshort.config import dump_config, load_config

    if check:
        cfg = load_config(config)
        typer.echo(dump_config(cfg), nl=False)
        typer.echo(f"{config}: valid", err=True)
        return
    from longshort.pipeline import run_pipeline

    run_dir = run_pipeline(config, out, resume)
    report = run_dir / "report.md"
    typer.echo(f"report: {report}" if report.exists() else f"run directory: {run_dir}")
