"""CLI commands of the evaluation area: `eval`, `compare`, `grade`.

- `longshort eval --benchmark gsm8k --mode collab --samples 4 --limit 50 --out runs/NAME
  [--baseline runs/OTHER]` → predictions.jsonl (resumable), metrics.json, report.md;
- `longshort compare runs/A runs/B …` → one table on the terminal, plus an accuracy-vs-tokens
  PNG (and the same table in Markdown) next to it;
- `longshort grade PRED GOLD [--choices …]` → prints `correct` or `wrong` (exit 0 either way),
  so users can see how an answer is judged.

Defaults come from the pydantic configs (`EvalConfig`, `CollabConfig`), never a second copy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from longshort.cli.app import app, check_urls, config_default, config_option, finite
from longshort.dialogue.collab import CollabConfig
from longshort.errors import InputError
from longshort.evaluation.grading import GradingConfig
from longshort.harness import EvalConfig

_MODES = ("collab", "long", "short")


@app.command("eval")
def eval_command(
    benchmark: Annotated[str, typer.Option(help="math500, aime24, aime25, amc23, gpqa_diamond, gsm8k, "
                                                "a JSONL path with problem, answer and optional choices, or hub:DATASET:CONFIG@SPLIT")],
    out: Annotated[Path, typer.Option(help="Run directory (created; rerun the same command to resume)")],
    mode: Annotated[str, typer.Option(help="collab (the pair), long (long model alone), short (short alone)")] = "collab",
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem (Pass@1 over k)")] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N problems")] = None,
    baseline: Annotated[Path | None, typer.Option(help="Finished run directory to compute AES against")] = None,
    long: Annotated[str | None, config_option(EvalConfig, "long_model", "--long", annotated=True, help="Long-thought model spec")] = None,
    short: Annotated[str | None, config_option(EvalConfig, "short_model", "--short", annotated=True, help="Short-thought model spec")] = None,
    engine: Annotated[str | None, config_option(EvalConfig, "engine", annotated=True, help="transformers, openai, vllm")] = None,
    base_url: Annotated[str | None, typer.Option(help="Server URL for --engine openai")] = None,
    long_base_url: Annotated[str | None, typer.Option(help="The long model's own server (over --base-url)")] = None,
    short_base_url: Annotated[str | None, typer.Option(help="The short model's own server (over --base-url)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Benchmark data directory (default: $LONGSHORT_DATA or ../shared/benchmarks)")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Most tokens one generation writes: every turn of either role, and a solo answer (--mode long|short) "
                                                           f"(default: {config_default(CollabConfig, 'max_new_tokens_long')} long / "
                                                           f"{config_default(CollabConfig, 'max_new_tokens_short')} short; solo: the dialogue's whole budget)")] = None,
    max_new_tokens_long: Annotated[int | None, config_option(CollabConfig, "max_new_tokens_long", annotated=True, min=1, help="Long turn limit, over --max-new-tokens")] = None,
    max_new_tokens_short: Annotated[int | None, config_option(CollabConfig, "max_new_tokens_short", annotated=True, min=1, help="Short turn limit, over --max-new-tokens")] = None,
    max_turns: Annotated[int | None, config_option(CollabConfig, "max_turns", annotated=True, min=1, help="Most long turns per dialogue")] = None,
    temperature: Annotated[float | None, config_option(CollabConfig, "temperature", annotated=True, min=0.0, help="Sampling temperature")] = None,
    seed: Annotated[int | None, config_option(EvalConfig, "seed", annotated=True, help="Base seed")] = None,
    grading_timeout: Annotated[float | None, config_option(GradingConfig, "timeout", annotated=True, min=0.01, help="Seconds to grade one answer")] = None,
    interval: Annotated[str | None, config_option(EvalConfig, "interval", annotated=True, help="Pass@1 interval: auto, bootstrap or normal (see docs/evaluation.md)")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count bad benchmark records instead of stopping")] = False,
    resume: Annotated[bool, typer.Option(help="Skip records already in predictions.jsonl")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Evaluate a model pair (or one model) on a benchmark: Pass@1, tokens, AES."""
    from pydantic import ValidationError

    from longshort.harness import run_eval

    if mode not in _MODES:
        raise InputError(f"unknown mode {mode!r}; expected one of {', '.join(_MODES)}", field="mode")
    finite(temperature=temperature, grading_timeout=grading_timeout)
    overrides = {k: v for k, v in {
        "benchmark": benchmark, "mode": mode, "samples": samples, "limit": limit,
        "long_model": long, "short_model": short, "engine": engine, "base_url": base_url,
        "long_base_url": long_base_url, "short_base_url": short_base_url,
        "data_dir": str(data_dir) if data_dir else None, "seed": seed, "interval": interval,
        "baseline_dir": str(baseline) if baseline else None, "skip_bad": skip_bad or None}.items() if v is not None}
    collab = {**CollabConfig.token_flags(max_new_tokens, long=max_new_tokens_long, short=max_new_tokens_short),
              **{k: v for k, v in {"max_turns": max_turns, "temperature": temperature}.items() if v is not None}}
    try:
        cfg = EvalConfig(**overrides, collab=collab,
                         grading={"timeout": grading_timeout} if grading_timeout else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"{err['msg']}", field=".".join(str(x) for x in err["loc"])) from None
    from longshort.io import check_output_dir
    from longshort.models import spec_problem

    check_urls(cfg.engine, base_url=base_url, long_base_url=long_base_url, short_base_url=short_base_url)
    check_output_dir(out)
    for spec, name in ((cfg.long_model, "--long"), (cfg.short_model, "--short")):
        if cfg.engine in ("transformers", "hf") and spec_problem(spec):
            raise InputError(spec_problem(spec), field=name)
    m = run_eval(cfg, out, resume=resume, progress=progress,
                 command="longshort " + " ".join(sys.argv[1:]) if sys.argv else None)
    p1 = m["pass_at_1"]
    ci = f" [{100 * p1['low']:.1f}, {100 * p1['high']:.1f}]" if p1.get("low") is not None else ""
    line = (f"{m['benchmark']} {m['mode']}: Pass@1 {100 * p1['mean']:.1f}%{ci} over {m['problems']} problems × "
            f"{m['samples_per_problem']}; {m['tokens']['total']:.1f} tokens/sample")
    if m.get("aes") and m["aes"].get("aes") is not None:
        line += f"; AES {m['aes']['aes']:.3f}"
    print(line)
    if m.get("skipped_bad_records"):
        print(f"skipped {m['skipped_bad_records']} bad benchmark records (--skip-bad)")
    print(f"wrote {out}/predictions.jsonl, metrics.json, report.md")


@app.command("compare")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories made by `longshort eval`")],
    plot: Annotated[Path | None, typer.Option(help="PNG path (default: accuracy_vs_tokens.png in the parent "
                                                   "directory of the first run)")] = None,
) -> None:
    """Compare evaluation runs: one table, and an accuracy-vs-tokens plot (PNG)."""
    from rich.console import Console
    from rich.table import Table

    from longshort.evaluation.report import (
        COMPARISON_HEADERS,
        check_run_metrics,
        comparison_markdown,
        comparison_rows,
        format_row,
        plot_accuracy_vs_tokens,
    )
    from longshort.harness import load_run_metrics
    from longshort.io import check_output_file, write_text_atomic

    if plot is not None:
        check_output_file(plot, option="--plot")
        if plot.suffix.lower() != ".png":
            raise InputError("expected a .png file name", path=str(plot), field="--plot")
    png = plot or Path(runs[0]).resolve().parent / "accuracy_vs_tokens.png"
    from longshort.io import check_replaceable, starts_with

    # an earlier plot and table are replaced; a user's notes.md never
    check_replaceable(png, command="compare", ours=starts_with(b"\x89PNG"), option="--plot")
    check_replaceable(png.with_suffix(".md"), command="compare", option="--plot",
                      ours=starts_with(("| " + " | ".join(COMPARISON_HEADERS) + " |").encode()))
    loaded = [(str(r), check_run_metrics(load_run_metrics(r), str(Path(r) / "metrics.json"))) for r in runs]
    labels = [Path(r).name or str(r) for r, _ in loaded]
    if len(set(labels)) < len(labels):
        labels = [r for r, _ in loaded]
    rows = comparison_rows(list(zip(labels, (m for _, m in loaded), strict=True)))
    table = Table(title="longshort compare")
    for h in COMPARISON_HEADERS:
        table.add_column(h, justify="left" if h in ("run", "benchmark", "mode") else "right")
    for row in rows:
        table.add_row(*format_row(row))
    # not a terminal (piped, captured): rich would squeeze the 14 columns into 80 characters
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    benchmarks = {r["benchmark"] for r in rows}
    if len(benchmarks) > 1:
        print(f"note: the runs cover different benchmarks ({', '.join(sorted(map(str, benchmarks)))})")
    plot_accuracy_vs_tokens(rows, png)
    write_text_atomic(png.with_suffix(".md"), comparison_markdown(rows))
    print(f"wrote {png} and {png.with_suffix('.md')}")


@app.command("grade")
def grade_command(
    prediction: Annotated[str, typer.Argument(help="A response or a bare answer, e.g. '\\boxed{1/2}'")],
    gold: Annotated[str, typer.Argument(help="The gold answer (a letter for multiple choice)")],
    choices: Annotated[list[str] | None, typer.Option("--choices", help="A choice (repeat for each, in order "
                                                                        "A, B, …): multiple-choice grading")] = None,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds allowed")] = 5.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print the extracted answer and the rule")] = False,
) -> None:
    """Print `correct` or `wrong` for PRED against GOLD (exit 0 either way)."""
    import math

    from longshort.evaluation.grading import LETTERS, gold_choice, grade_detail
    from longshort.io import MAX_TEXT_CHARS, check_text

    if not gold.strip():
        raise InputError("empty", field="GOLD")
    check_text(gold, field="GOLD")  # lone surrogates (bytes that are not UTF-8), size
    if prediction.strip():
        check_text(prediction, field="PRED", max_chars=10 * MAX_TEXT_CHARS)
    if not math.isfinite(timeout) or timeout > 3600:
        raise InputError(f"expected a number of seconds between 0.01 and 3600, got {timeout}", field="--timeout")
    if choices:
        if not 2 <= len(choices) <= len(LETTERS):
            raise InputError(f"expected 2 to {len(LETTERS)} choices, got {len(choices)}", field="--choices")
        for i, c in enumerate(choices):
            if not c.strip():
                raise InputError(f"choice {LETTERS[i]} is empty", field="--choices")
        if gold_choice(gold, choices) is None:
            shown = ", ".join(LETTERS[:len(choices)])
            raise InputError(f"gold {gold.strip()[:80]!r} is not a choice: give a letter ({shown}) or the "
                             "text of one of the --choices", field="GOLD")
    res = grade_detail(prediction, gold, choices=choices or None, timeout=timeout)
    print("correct" if res.correct else "wrong")
    if verbose:
        print(f"extracted: {res.extracted!r} · rule: {res.method}")
