"""`longshort solve`: solve one problem (printing the dialogue) or a JSONL file of problems.

A thin layer over `longshort.dialogue.collab.iter_solve`. Everything a user can get wrong is
checked before any model is loaded (problem text, input file, options, the --out file), and
--out is appended one record at a time, resuming by id, so an interrupted run loses at most the
dialogues in flight and a rerun picks up where it stopped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from longshort.cli.app import app, config_option, finite
from longshort.dialogue.collab import CollabConfig
from longshort.errors import InputError, LongshortError

ROLE_STYLE = {"long": "magenta", "short": "green"}


def _config(overrides: dict[str, Any]) -> CollabConfig:
    try:
        return CollabConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "option"
        raise LongshortError(f"{name}: {err['msg']}") from None


# what every record this command writes holds: refuse to append to a JSONL of anything else
OUT_FIELDS = ("turns", "final_answer")


def _check_out_file(out: Path, inputs: Path | None, skip_bad: bool = False) -> None:
    """Refuse an --out that we could damage: the input itself, a directory, a file that is not
    a JSONL of dialogue records, or one with a bad line in the middle (only a torn last line, an
    interrupted append, is ever dropped on resume)."""
    from longshort.io import check_output_file, scan_output

    check_output_file(out, inputs=[inputs])
    scan_output(out, expect=OUT_FIELDS, skip_bad=skip_bad)


def _load_problems(file: Path, skip_bad: bool) -> list[dict[str, Any]]:
    from longshort.io import ReadStats, ensure_ids, iter_jsonl

    stats = ReadStats()
    records, lines = [], []
    for line, rec in iter_jsonl(file, skip_bad=skip_bad, stats=stats, with_lines=True):
        try:
            _check_problem_record(rec, str(file), line)
        except InputError as exc:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.reasons.append(str(exc))
            continue
        records.append(rec)
        lines.append(line)
    if not records:
        raise InputError("no records" if not stats.skipped else "no records left after skipping bad ones",
                         path=str(file))
    if stats.skipped:
        typer.echo(f"skipped {stats.skipped} bad line(s) in {file} (--skip-bad); first: {stats.reasons[0]}",
                   err=True)
    return ensure_ids(records, prefix=f"{file.stem}-", path=str(file), lines=lines)


def _check_problem_record(rec: dict[str, Any], path: str, line: int) -> None:
    from longshort.io import check_problem_fields

    check_problem_fields(rec, path=path, line=line)


def _grade(rec: dict[str, Any]) -> bool | None:
    """Correctness of a record that carries a gold `answer` (None when it has none)."""
    if rec.get("answer") in (None, ""):
        return None
    from longshort.evaluation.grading import grade

    pred = rec.get("final_answer")
    return bool(pred is not None and grade(f"\\boxed{{{pred}}}", str(rec["answer"]), choices=rec.get("choices")))


def _print_dialogue(console, rec: dict[str, Any]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.print(Panel(Text(rec["problem"]), title=f"problem {rec['id']}", border_style="blue"))
    for i, t in enumerate(rec["turns"], start=1):
        flags = f" · flags: {', '.join(t['flags'])}" if t["flags"] else ""
        console.print(Panel(Text(t["text"]), border_style=ROLE_STYLE[t["role"]],
                            title=f"turn {i} · {t['role']} · {t['tokens']} tokens{flags}", title_align="left"))
    table = Table(title="tokens", show_edge=False)
    for col in ("", "generated", "prompt"):
        table.add_column(col, justify="right")
    for role in ("long", "short"):
        table.add_row(Text(role, style=ROLE_STYLE[role]), str(rec["tokens"][role]), str(rec["prompt_tokens"][role]))
    table.add_row("total", str(rec["tokens"]["total"]), str(sum(rec["prompt_tokens"].values())))
    console.print(table)
    verdict = "" if rec.get("correct") is None else ("  ✓ correct" if rec["correct"] else "  ✗ wrong")
    console.print(f"final answer: [bold]{rec['final_answer']}[/bold]{verdict}   end: {rec['end_reason']}"
                  + (f"   flags: {', '.join(rec['flags'])}" if rec["flags"] else ""))


def _print_summary(console, records: list[dict[str, Any]], skipped: int) -> None:
    n = len(records)
    if n == 0:
        console.print(f"nothing to do: all {skipped} record(s) already in --out")
        return
    mean = {r: sum(x["tokens"][r] for x in records) / n for r in ("long", "short", "total")}
    finished = sum(x["finished"] for x in records)
    graded = [x["correct"] for x in records if x.get("correct") is not None]
    acc = f", accuracy {sum(graded) / len(graded):.1%} ({sum(graded)}/{len(graded)})" if graded else ""
    console.print(f"solved {n} dialogue(s) ({skipped} already done), {finished} finished with an answer{acc}")
    console.print(f"mean generated tokens: long {mean['long']:.1f}, short {mean['short']:.1f}, "
                  f"total {mean['total']:.1f}")


@app.command()
def solve(
    problem: str | None = typer.Argument(None, help="The problem to solve (or use --file)."),
    file: Path | None = typer.Option(None, "--file", "-f", help="JSONL of problems: {id?, problem, answer?, ...}."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Append dialogue records here (JSONL); ids "
                                                              "already in it are skipped (resume)."),
    long: str = typer.Option("smollm2-135m", "--long", help="Long-thought model spec."),
    short: str = typer.Option("smollm2-135m", "--short", help="Short-thought model spec."),
    engine: str = typer.Option("transformers", "--engine", help="transformers | openai | vllm."),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible server (--engine openai)."),
    long_base_url: str | None = typer.Option(None, "--long-base-url", help="The long model's own server (over --base-url)."),
    short_base_url: str | None = typer.Option(None, "--short-base-url", help="The short model's own server (over --base-url)."),
    mode: str = typer.Option("collab", "--mode", help="collab (the pair) | long | short (one model alone)."),
    max_turns: int | None = config_option(CollabConfig, "max_turns", "--max-turns", min=1, help="Most long turns per dialogue."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1,
                                              help="Most tokens one generation writes: every turn of either role, and a solo answer (--mode long|short)."),
    max_new_tokens_long: int | None = config_option(CollabConfig, "max_new_tokens_long", "--max-new-tokens-long", min=1,
                                                    help="Long turn limit, over --max-new-tokens."),
    max_new_tokens_short: int | None = config_option(CollabConfig, "max_new_tokens_short", "--max-new-tokens-short",
                                                     min=1, help="Short turn limit, over --max-new-tokens."),
    temperature: float | None = config_option(CollabConfig, "temperature", "--temperature", min=0.0,
                                              help="Sampling temperature; 0 = greedy."),
    seed: int | None = config_option(CollabConfig, "seed", "--seed", help="Base seed."),
    samples: int | None = config_option(CollabConfig, "samples", "--samples", min=1, help="Dialogues per problem."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) malformed lines of --file."),
    show: bool | None = typer.Option(None, "--show/--no-show", help="Print each dialogue (default: only for a "
                                                                   "single problem)."),
) -> None:
    """Solve a problem with the long⊗short pair and print the dialogue with token counts."""
    from rich.console import Console

    from longshort.dialogue.collab import MODES, iter_solve

    # 1. Everything checkable without a model.
    if (problem is None) == (file is None):
        raise LongshortError("give either a PROBLEM or --file problems.jsonl (not both)")
    finite(temperature=temperature)
    if mode not in MODES:
        raise LongshortError(f"--mode: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    from longshort.cli.app import check_urls

    check_urls(engine, base_url=base_url, long_base_url=long_base_url, short_base_url=short_base_url)
    config = _config({
        "max_turns": max_turns, "temperature": temperature, "seed": seed, "samples": samples,
        **CollabConfig.token_flags(max_new_tokens, long=max_new_tokens_long, short=max_new_tokens_short),
    })
    if file is not None:
        problems = _load_problems(file, skip_bad)
    else:
        if not problem.strip():
            raise InputError("empty problem; give the problem text", field="problem")
        from longshort.io import check_text

        check_text(problem, field="PROBLEM")
        digest = hashlib.sha1(problem.strip().encode()).hexdigest()[:10]
        problems = [{"id": f"cli-{digest}", "problem": problem.strip()}]
    if out is not None:
        _check_out_file(out, file, skip_bad)
    from longshort.models import spec_problem

    for spec, name in ((long, "--long"), (short, "--short")):
        if not spec.strip():
            raise LongshortError(f"{name}: empty model spec")
        if engine in ("transformers", "hf") and spec_problem(spec):
            raise InputError(spec_problem(spec), field=name)

    # 2. Resume: ids already written are skipped.
    from longshort.io import ResumableWriter

    writer = ResumableWriter(out, expect=OUT_FIELDS, skip_bad=skip_bad) if out is not None else None
    done = set(writer.done_ids) if writer else set()
    console = Console()
    show = (file is None) if show is None else show
    todo = sum(1 for p in problems for k in range(config.samples)
               if _record_id(p["id"], k, config.samples) not in done)
    if todo == 0:
        _print_summary(console, [], len(done))
        return

    # 3. Models, then solve, appending each record as its dialogue finishes.
    from longshort.engines import make_pair

    long_engine, short_engine = make_pair(long.strip(), short.strip(), engine, base_url=base_url,
                                          long_base_url=long_base_url, short_base_url=short_base_url)
    records: list[dict[str, Any]] = []
    try:
        for rec in iter_solve(problems, long_engine=long_engine, short_engine=short_engine, config=config,
                              mode=mode, progress=file is not None, skip_ids=done):
            correct = _grade(rec)
            if correct is not None:
                rec["correct"] = correct
            if writer is not None:
                writer.write(rec)
            records.append(rec)
            if show:
                _print_dialogue(console, rec)
    finally:
        if writer is not None:
            writer.close()
        for e in {id(long_engine): long_engine, id(short_engine): short_engine}.values():
            e.close()
    if file is not None:
        _print_summary(console, records, len(done & {_record_id(p["id"], k, config.samples)
                                                     for p in problems for k in range(config.samples)}))
    if out is not None:
        console.print(f"records: {out}")


def _record_id(pid: Any, k: int, samples: int) -> str:
    from longshort.dialogue.collab import record_id

    return record_id(str(pid), k, samples)
