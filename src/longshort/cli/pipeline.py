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
    stop_after: str = typer.Option(None, "--stop-after", help="end after this stage (data, chunk, baseline, "
                                   "score, coldstart, sft, rl, eval); default: the recipe's stop_after, else all"),
    verbose: bool = typer.Option(False, "--verbose", help="show the stages' own output (trainer logs, progress "
                                 "bars, warnings) on the terminal; by default it goes to OUT/pipeline.log"),
) -> None:
    """Run data → chunk → score → coldstart → sft → rl → eval → report from one recipe."""
    from longshort.config import dump_config, load_config

    if check:
        cfg = load_config(config)
        typer.echo(dump_config(cfg), nl=False)
        typer.echo(f"{config}: valid", err=True)
        return
    from longshort.pipeline import STAGE_NAMES, run_pipeline

    if stop_after is not None and stop_after not in STAGE_NAMES:
        raise typer.BadParameter(f"unknown stage {stop_after!r}; stages: {', '.join(STAGE_NAMES)}",
                                 param_hint="--stop-after")
    run_dir = run_pipeline(config, out, resume, stop_after=stop_after, verbose=verbose)
    report = run_dir / "report.md"
    typer.echo(f"report: {report}" if report.exists() else f"run directory: {run_dir}")
