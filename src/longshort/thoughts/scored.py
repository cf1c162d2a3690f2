"""Checks of a scored trace record, the input of `coldstart` (`longshort score`'s output or a
user's own file): every field cold start reads, with its type, as one `InputError` naming file,
line and field, before any model or tokenizer loads."""

from __future__ import annotations

import math
from typing import Any

from longshort.errors import InputError
from longshort.io import check_answer, check_text
from longshort.thoughts.ingest import MAX_RESPONSE_CHARS


def check_scored_record(rec: dict[str, Any], path: str, line: int, *, require_correct: bool = True) -> None:
    """The fields coldstart reads from a scored record, with their types (`response` is graded
    against `answer` unless incorrect traces are kept)."""
    for fld in ("id", "problem", "answer", "thoughts"):
        if rec.get(fld) is None or rec.get(fld) in ("", []):
            hint = " (run `longshort chunk` and `longshort score` first)" if fld == "thoughts" else ""
            raise InputError("missing" + hint, path=path, line=line, field=fld)
    if isinstance(rec["id"], bool) or not isinstance(rec["id"], str | int):
        raise InputError("expected a string or an integer", path=path, line=line, field="id")
    check_text(rec["problem"], path=path, line=line, field="problem")
    rec["answer"] = check_answer(rec["answer"], path=path, line=line)
    if require_correct or rec.get("response") is not None:  # graded against the answer
        check_text(rec.get("response"), path=path, line=line, field="response", max_chars=MAX_RESPONSE_CHARS)
    ch = rec.get("choices")
    if ch is not None and not (isinstance(ch, list) and 2 <= len(ch) <= 10
                               and all(isinstance(c, str) and c.strip() for c in ch)):
        raise InputError("expected a list of 2-10 non-empty strings", path=path, line=line, field="choices")
    thoughts = rec["thoughts"]
    if not isinstance(thoughts, list):
        raise InputError("expected a list of thought objects", path=path, line=line, field="thoughts")
    for i, t in enumerate(thoughts):
        where = f"thoughts.{i}"
        if not isinstance(t, dict):
            raise InputError(f"expected a thought object {{text, score, ...}}, got {type(t).__name__}",
                             path=path, line=line, field=where)
        if not isinstance(t.get("text"), str):
            raise InputError("expected a string", path=path, line=line, field=f"{where}.text")
        if t["text"].strip():  # lone surrogates, size
            check_text(t["text"], path=path, line=line, field=f"{where}.text", max_chars=MAX_RESPONSE_CHARS)
        for num in ("score", "e"):
            v = t.get(num)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                raise InputError("expected a finite number", path=path, line=line, field=f"{where}.{num}")
        check_span(t, path, line, where)
    if not any(isinstance(t.get("score"), int | float) for t in thoughts):
        raise InputError("thoughts have no 'score' (run `longshort score` first)", path=path, line=line,
                         field="thoughts")
    gold = rec.get("gold_thoughts")
    if gold is not None:
        if not isinstance(gold, list):
            raise InputError("expected a list of thought objects", path=path, line=line, field="gold_thoughts")
        for i, g in enumerate(gold):
            if not isinstance(g, dict):
                raise InputError("expected a thought object", path=path, line=line, field=f"gold_thoughts.{i}")
            check_span(g, path, line, f"gold_thoughts.{i}")


def check_span(t: dict[str, Any], path: str, line: int, where: str) -> None:
    """A thought's `start`/`end`: 1-based step numbers (integers, start <= end)."""
    for end in ("start", "end"):
        v = t.get(end)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError("expected a step number (an integer >= 1)", path=path, line=line,
                             field=f"{where}.{end}")
    if t["start"] > t["end"]:
        raise InputError(f"start {t['start']} is after end {t['end']}", path=path, line=line, field=where)
