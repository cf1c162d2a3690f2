"""Checks on the fields of user records: texts, gold answers, problem records and ids, each an
`InputError` naming the file, line and field."""

from __future__ import annotations

import math
from typing import Any

from longshort.errors import InputError

# A problem (or any one text field) longer than this is refused up front: 100,000 characters is
# about 25,000 tokens, beyond the context of the small models this project runs and far beyond any
# benchmark problem (the longest MATH500/GPQA problems are a few thousand characters).
MAX_TEXT_CHARS = 100_000


def check_text(value: Any, *, path: str | None = None, line: int | None = None, field: str,
               max_chars: int = MAX_TEXT_CHARS) -> str:
    """A non-empty string of at most `max_chars` characters, or `InputError` naming the field."""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {_json_type(value)}", path=path, line=line, field=field)
    if not value.strip():
        raise InputError("empty", path=path, line=line, field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\udcff" in JSON, undecodable argv bytes)
        raise InputError(f"not valid Unicode text (lone surrogate at character {exc.start + 1})", path=path,
                         line=line, field=field) from None
    if len(value) > max_chars:
        raise InputError(f"too long ({len(value):,} characters; at most {max_chars:,})", path=path,
                         line=line, field=field)
    return value


def check_answer(value: Any, *, path: str | None = None, line: int | None = None,
                 field: str = "answer") -> str:
    """A gold answer as a string: a non-empty string or a finite number (not a boolean, a list
    or an object), or `InputError` naming the field."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InputError(f"expected a string or a number, got {_json_type(value)}", path=path, line=line,
                         field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"expected a finite number, got {value}", path=path, line=line, field=field)
    text = str(value).strip()
    if not text:
        raise InputError("empty", path=path, line=line, field=field)
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"too long ({len(text):,} characters)", path=path, line=line, field=field)
    return text


def check_problem_fields(rec: dict[str, Any], *, path: str | None = None, line: int | None = None,
                         answer_required: bool = False) -> dict[str, Any]:
    """The fields of a problem record (solve, rl): `problem` a string (not too long), `answer` a
    string or a finite number (required or optional), `choices` 2-10 non-empty strings, `id` a
    string or an integer. Normalises `problem`/`answer` in place; `InputError` naming the field."""
    if rec.get("problem") is None:
        raise InputError("missing", path=path, line=line, field="problem")
    rec["problem"] = check_text(rec["problem"], path=path, line=line, field="problem")
    if rec.get("answer") is not None:
        rec["answer"] = check_answer(rec["answer"], path=path, line=line)
    elif answer_required:
        raise InputError("missing", path=path, line=line, field="answer")
    ch = rec.get("choices")
    if ch is not None and not (isinstance(ch, list) and 2 <= len(ch) <= 10
                               and all(isinstance(c, str) and c.strip() for c in ch)):
        raise InputError("expected a list of 2-10 non-empty strings", path=path, line=line, field="choices")
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip()):
        raise InputError(f"expected a non-empty string or an integer, got {_json_type(rid)}", path=path,
                         line=line, field="id")
    return rec


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null", str: "a string",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def ensure_ids(records: list[dict[str, Any]], prefix: str = "", *, path: str | None = None,
               lines: list[int] | None = None) -> list[dict[str, Any]]:
    """Give every record a stable string `id` (its existing one, else `prefix` + line index).
    An id must be a string or an integer (not a float, list, object or boolean) and unique."""
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        line = lines[i] if lines is not None and i < len(lines) else i + 1
        raw = rec.get("id")
        if raw is None:
            rid = f"{prefix}{i}"
        elif isinstance(raw, bool) or not isinstance(raw, str | int):
            raise InputError(f"expected a string or an integer, got {_json_type(raw)}", path=path, line=line,
                             field="id")
        else:
            rid = str(raw).strip()
            if not rid:
                raise InputError("empty", path=path, line=line, field="id")
        if rid in seen:
            raise InputError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=path, line=line,
                             field="id")
        seen[rid] = line
        rec["id"] = rid
    return records


def check_url(value: Any, *, field: str, path: str | None = None, line: int | None = None) -> str:
    """An OpenAI-compatible server's URL: ``http(s)://HOST[:PORT][/PATH]`` without spaces, or
    `InputError` naming the field. A mistyped URL would otherwise surface only when the first
    request fails, after models have loaded.

    >>> check_url("http://127.0.0.1:8000/v1", field="--base-url")
    'http://127.0.0.1:8000/v1'
    >>> check_url("localhost:8000", field="--base-url")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    longshort.errors.InputError: field '--base-url': 'localhost:8000' is not a server URL (...)
    """
    from urllib.parse import urlsplit

    problem = None
    if not isinstance(value, str) or not value.strip():
        problem = "empty" if isinstance(value, str) or value is None else f"expected a string, got {_json_type(value)}"
    elif any(c.isspace() for c in value):
        problem = f"{value!r} holds spaces"
    else:
        try:
            parts = urlsplit(value)
            port = parts.port  # ValueError outside 0-65535
        except ValueError as exc:
            problem = f"{value!r}: {exc}"
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problem = f"{value!r} is not a server URL (expected http://HOST[:PORT]/v1 or https://...)"
            elif port == 0:
                problem = f"{value!r}: port 0"
    if problem:
        raise InputError(problem, path=path, line=line, field=field)
    return value
