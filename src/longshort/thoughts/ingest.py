"""Read long-CoT trace files into validated records `{id, problem, answer, solution?, response}`.

Accepted input (JSONL, one trace per line):

- the project's format: `problem`, `answer`, `response` (the long CoT, `<think>` wrappers
  allowed), optional `id`, `solution` and anything else (passed through);
- common field names of public long-CoT dumps, mapped to ours (`question`/`Instruction` →
  `problem`, `gold_answer`/`gt`/`Correct Answer` → `answer`, `long_cot`/`thought`/`thinking` →
  `response`, a one-element `code` list as in SkyThought outputs → `response`). The mapped
  name is recorded in `source_fields`.

Every record is checked before any work starts; a bad one raises `InputError` naming the
file, line and field (or is skipped and counted with `skip_bad`). Companion annotation files
(`chunks`/`sentences` lists without a trace) get an error that says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from longshort.errors import InputError
from longshort.io import MAX_TEXT_CHARS, ReadStats, check_answer, check_text, iter_jsonl
from longshort.thoughts.steps import split_steps

# A long CoT of 32k-64k tokens is 130-260k characters; 1,000,000 is far beyond any model's output.
MAX_RESPONSE_CHARS = 1_000_000
# Real traces have tens to a few thousand steps (paragraphs); chunking is quadratic in the steps
# (10,000 take seconds, 500,000 would take hours), so a trace with more is refused up front.
MAX_STEPS = 10_000

# our field -> names found in public trace dumps, in order of preference
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "problem": ("problem", "question", "Instruction", "prompt_text", "query"),
    "answer": ("answer", "gold_answer", "gt_answer", "gt", "Correct Answer", "final_answer"),
    "response": ("response", "long_cot", "thought", "thinking", "generation", "output", "code"),
}
ANNOTATION_FIELDS = ("chunks", "sentences")


def _pick(rec: dict[str, Any], name: str) -> tuple[str | None, Any]:
    for alias in FIELD_ALIASES[name]:
        if alias in rec and rec[alias] is not None:
            return alias, rec[alias]
    return None, None


def normalize_trace(rec: dict[str, Any], *, path: str | None = None, line: int | None = None,
                    index: int = 0, id_prefix: str = "") -> dict[str, Any]:
    """Map one raw record to `{id, problem, answer, solution?, response, ...}` or raise InputError."""
    def err(msg: str, fld: str | None = None) -> InputError:
        return InputError(msg, path=path, line=line, field=fld)

    if "response" not in rec and any(k in rec for k in ANNOTATION_FIELDS) and "problem" not in rec:
        kind = next(k for k in ANNOTATION_FIELDS if k in rec)
        raise err(f"this looks like an annotation file (field '{kind}' without a trace); "
                  "use its trace file and join on 'id'", "response")
    out = dict(rec)
    mapped: dict[str, str] = {}
    for name in ("problem", "answer", "response"):
        alias, value = _pick(rec, name)
        if alias is None:
            raise err("missing", name)
        if name == "response" and isinstance(value, list):
            if len(value) != 1 or not isinstance(value[0], str):
                raise err(f"expected a string (or a one-element list), got a list of {len(value)}",
                          alias)
            value = value[0]
        if name == "answer":  # a string or a finite number (not a boolean, NaN or 1e400)
            value = check_answer(value, path=path, line=line, field=alias)
        if not isinstance(value, str):
            raise err(f"expected a string, got {type(value).__name__}", alias)
        if not value.strip():
            raise err("empty", alias)
        # lone surrogates (no output can hold them) and sizes, before any work: as solve and eval do
        check_text(value, path=path, line=line, field=alias,
                   max_chars=MAX_RESPONSE_CHARS if name == "response" else MAX_TEXT_CHARS)
        if alias != name:
            mapped[name] = alias
            out.pop(alias, None)
        out[name] = value.strip() if name == "answer" else value
    try:
        steps = split_steps(out["response"])
    except ValueError as exc:
        raise err(str(exc), mapped.get("response", "response")) from None
    if len(steps.steps) > MAX_STEPS:
        raise err(f"too many steps ({len(steps.steps):,} paragraphs; at most {MAX_STEPS:,}): not a reasoning "
                  "trace (a repetition loop?)", mapped.get("response", "response"))
    solution = out.get("solution")
    if isinstance(solution, str) and solution.strip():
        check_text(solution, path=path, line=line, field="solution", max_chars=MAX_RESPONSE_CHARS)
    if "solution" in out and out["solution"] is not None and not isinstance(out["solution"], str):
        raise err(f"expected a string, got {type(out['solution']).__name__}", "solution")
    if "choices" in out and out["choices"] is not None and not isinstance(out["choices"], (list, dict)):
        raise err("expected a list of choices", "choices")
    rid = out.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        raise err(f"expected a string or an integer, got {type(rid).__name__}", "id")
    out["id"] = str(rid) if rid is not None and str(rid).strip() else f"{id_prefix}{index}"
    if mapped:
        out["source_fields"] = mapped
    return out


def load_traces(path: str | os.PathLike, *, skip_bad: bool = False,
                stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Read and validate a long-CoT JSONL file (see module docstring). Ids must be unique."""
    stats = stats if stats is not None else ReadStats()
    p = Path(path)
    prefix = f"{p.name.split('.')[0]}-"
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    # iter_jsonl validates JSON and gives each record's file line, for the field errors found here
    for index, (line, rec) in enumerate(iter_jsonl(p, skip_bad=skip_bad, stats=stats, with_lines=True)):
        try:
            norm = normalize_trace(rec, path=str(p), line=line, index=index, id_prefix=prefix)
            if norm["id"] in seen:
                raise InputError(f"duplicate id {norm['id']!r} (first on line {seen[norm['id']]})",
                                 path=str(p), line=line, field="id")
        except InputError as exc:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.read -= 1
            if stats.lines:  # keep stats.lines the file line of each record returned
                stats.lines.pop()
            stats.reasons.append(str(exc))
            continue
        seen[norm["id"]] = line or index + 1
        out.append(norm)
    if not out and stats.skipped == 0:
        raise InputError("no records", path=str(p))
    return out

