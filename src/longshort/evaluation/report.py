"""Human-readable outputs of an evaluation: `report.md` and the accuracy-vs-tokens plot.

`render_report(metrics)` turns a run's `metrics.json` content into Markdown;
`comparison_rows(runs)` gives the rows `longshort compare` prints and writes;
`plot_accuracy_vs_tokens(rows, path)` draws each run as a point (Pass@1 with its 95% interval
against mean generated tokens, log scale) into a PNG with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from longshort.io import save_figure_atomic


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _interval(p1: Mapping[str, Any]) -> str:
    if p1.get("low") is None:
        return "–"
    return f"[{_pct(p1['low'])}, {_pct(p1['high'])}]"


def render_report(m: Mapping[str, Any]) -> str:
    """Markdown summary of one evaluation run (the content of its metrics.json)."""
    p1 = m["pass_at_1"]
    models = m.get("models", {})
    lines = [
        f"# Evaluation: {m.get('benchmark', '?')} · mode {m.get('mode', '?')}",
        "",
        f"- models: long `{models.get('long', '–')}`, short `{models.get('short', '–')}`"
        f" (engine `{m.get('config', {}).get('engine', '–')}`)",
        f"- problems: {m['problems']}, samples per problem: {m['samples_per_problem']}, records: {m['records']}",
    ]
    if m.get("command"):
        lines.append(f"- command: `{m['command']}`")
    if m.get("wall_seconds") is not None:
        lines.append(f"- wall time of the last invocation: {m['wall_seconds']:.1f} s")
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| Pass@1 | {_pct(p1['mean'])} |",
        f"| 95% interval ({p1['method']} over {p1['n']} problems) | {_interval(p1)} |",
        f"| generated tokens / sample (total) | {_num(m['tokens']['total'])} |",
        f"| … long model | {_num(m['tokens']['long'])} |",
        f"| … short model | {_num(m['tokens']['short'])} |",
        f"| turns / dialogue | {_num(m['turns'], 2)} |",
        f"| finished by token limit | {_pct(m['finish_by_length_rate'])} |",
        f"| format violations | {_pct(m['format_violation_rate'])} |",
        f"| no answer | {_pct(m.get('no_answer_rate'))} |",
        f"| grading timeouts | {m.get('grading_timeouts', 0)} |",
    ]
    a = m.get("aes")
    if a:
        lines += [
            "",
            f"## AES against `{a.get('baseline_dir', 'baseline')}`",
            "",
            f"Baseline: Pass@1 {_pct(a['baseline_accuracy'])}, {_num(a['baseline_tokens'])} tokens/sample.",
            f"ΔA = {_num(a['delta_accuracy'], 3) if a['delta_accuracy'] is not None else 'undefined'}, "
            f"ΔL = {_num(a['delta_length'], 3) if a['delta_length'] is not None else 'undefined'}, "
            f"**AES = {_num(a['aes'], 3) if a['aes'] is not None else 'undefined (baseline accuracy or tokens is 0)'}** "
            f"(η={a['eta']}, ς₊={a['s_plus']}, ς₋={a['s_minus']}).",
        ]
    env = m.get("environment") or {}
    if env:
        lines += ["", "## Environment", ""]
        git = env.get("git") or {}
        if git.get("revision"):
            lines.append(f"- git: `{git['revision']}`{' (dirty)' if git.get('dirty') else ''}")
        for key in ("python", "platform", "device", "seed"):
            if key in env:
                lines.append(f"- {key}: `{env[key]}`")
        pkgs = env.get("packages") or {}
        if pkgs:
            lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())))
    lines += ["", "Per-record verdicts are in `predictions.jsonl` (`correct`, `grade.extracted`, "
              "`grade.method`); every number above is in `metrics.json`.", ""]
    return "\n".join(lines)


def comparison_rows(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run: label, benchmark, mode, Pass@1 (+ interval), tokens, turns, AES."""
    rows = []
    for label, m in runs:
        p1 = m["pass_at_1"]
        rows.append({
            "run": label, "benchmark": m.get("benchmark"), "mode": m.get("mode"),
            "problems": m["problems"], "samples": m["samples_per_problem"],
            "accuracy": p1.get("mean"), "low": p1.get("low"), "high": p1.get("high"),
            "tokens": m["tokens"].get("total"), "tokens_long": m["tokens"].get("long"),
            "tokens_short": m["tokens"].get("short"), "turns": m.get("turns"),
            "length_rate": m.get("finish_by_length_rate"), "format_rate": m.get("format_violation_rate"),
            "aes": (m.get("aes") or {}).get("aes"),
        })
    return rows


def check_run_metrics(m: Any, path: str) -> Mapping[str, Any]:
    """The fields `comparison_rows` reads from a run's metrics.json, with their types, or an
    `InputError` naming the file and field (a hand-edited or foreign metrics.json)."""
    from longshort.errors import InputError

    def number(value: Any, name: str, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise InputError("missing" if value is None else f"expected a number, got {value!r:.60}", path=path,
                             field=name)

    def mapping(value: Any, name: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise InputError(f"expected an object, got {value!r:.60}", path=path, field=name)
        return value

    m = mapping(m, "(top level)")
    p1 = mapping(m.get("pass_at_1"), "pass_at_1")
    number(p1.get("mean"), "pass_at_1.mean", optional=True)
    for k in ("low", "high"):
        number(p1.get(k), f"pass_at_1.{k}", optional=True)
    for k in ("problems", "samples_per_problem"):
        number(m.get(k), k)
    tokens = mapping(m.get("tokens"), "tokens")
    for k in ("total", "long", "short"):
        number(tokens.get(k), f"tokens.{k}", optional=True)
    for k in ("turns", "finish_by_length_rate", "format_violation_rate"):
        number(m.get(k), k, optional=True)
    if m.get("aes") is not None:
        number(mapping(m["aes"], "aes").get("aes"), "aes.aes", optional=True)
    return m


def format_row(row: Mapping[str, Any]) -> list[str]:
    """The cells of a comparison row as strings (shared by the terminal table and Markdown)."""
    return [str(row["run"]), str(row["benchmark"]), str(row["mode"]), str(row["problems"]),
            str(row["samples"]), _pct(row["accuracy"]),
            _interval({"low": row["low"], "high": row["high"]}), _num(row["tokens"]),
            _num(row["tokens_long"]), _num(row["tokens_short"]), _num(row["turns"], 2),
            _pct(row["length_rate"]), _pct(row["format_rate"]),
            "–" if row["aes"] is None else f"{row['aes']:.3f}"]


COMPARISON_HEADERS = ["run", "benchmark", "mode", "problems", "k", "Pass@1", "95% CI", "tokens",
                      "long", "short", "turns", "length-stop", "format", "AES"]


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    out = ["| " + " | ".join(COMPARISON_HEADERS) + " |", "|" + "---|" * len(COMPARISON_HEADERS)]
    out += ["| " + " | ".join(format_row(r)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def plot_accuracy_vs_tokens(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                            title: str | None = None) -> Path:
    """Scatter Pass@1 (with 95% interval bars) against mean generated tokens; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for row in rows:
            x = max(float(row["tokens"] or 0.0), 1e-9)
            y = 100 * row["accuracy"]
            if row.get("low") is not None:
                yerr = [[y - 100 * row["low"]], [100 * row["high"] - y]]
                ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=4, label=f"{row['run']} ({row['mode']})")
            else:
                ax.plot([x], [y], "o", label=f"{row['run']} ({row['mode']})")
        positive = [float(r["tokens"]) for r in rows if r["tokens"]]
        if positive and max(positive) / max(min(positive), 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("mean generated tokens per sample")
        ax.set_ylabel("Pass@1 (%)")
        ax.set_ylim(-2, 102)
        benchmarks = sorted({str(r["benchmark"]) for r in rows})
        ax.set_title(title or f"Accuracy vs tokens · {', '.join(benchmarks)}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)
    return path
