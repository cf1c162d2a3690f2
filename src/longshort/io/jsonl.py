"""Reading JSONL records: every line validated, bad ones named by file, line and field.

Bytes that are not UTF-8, the non-JSON constants `NaN`/`Infinity`, keys given twice and lone
surrogates are bad lines like any other; with `skip_bad` they are skipped and counted in
`ReadStats`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from longshort.errors import InputError
from longshort.io.paths import check_input_file


@dataclass
class ReadStats:
    """How many lines were read and how many bad ones were skipped (with their reasons).
    `lines` holds the file line of each record yielded, in order (for field errors)."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def _open_text(path: Path):
    """A text stream of a (possibly gzip-compressed) UTF-8 file. Kept for callers that count
    lines themselves; decoding errors become `InputError` through `iter_lines`."""
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | InputError]]:
    """(line number, text) of every line of a UTF-8 (or .gz) file, without the newline; a line
    that is not UTF-8 comes back as an `InputError` naming the file, line and column, so the
    caller can raise or skip it. A UTF-8 byte-order mark at the start is dropped."""
    p = check_input_file(path)
    try:
        if p.suffix == ".gz":
            import gzip

            fh = gzip.open(p, "rb")
        else:
            fh = open(p, "rb")
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=str(p)) from None
    with fh:
        lineno = 0
        try:
            for raw in fh:
                lineno += 1
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield lineno, InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                             f"{exc.start + 1})", path=str(p), line=lineno)
                    continue
                yield lineno, text.rstrip("\r\n")
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
            raise InputError(f"cannot read after line {lineno} ({type(exc).__name__}: {exc})",
                             path=str(p)) from None


def _nonfinite_path(value: Any, loc: str = "") -> str | None:
    """The dotted location of the first NaN/Infinity inside a parsed JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc or "(value)"
    if isinstance(value, dict):
        items: Iterable = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _nonfinite_path(v, f"{loc}.{k}" if loc else str(k))
        if found:
            return found
    return None


def _value_error(exc: ValueError) -> str:
    """What a ValueError from `json.loads` (not a JSONDecodeError) means, in one phrase."""
    msg = str(exc)
    if "integer string conversion" in msg:
        return "a number with more digits than Python converts (4,300)"
    return msg.split(";")[0]


def parse_record(text: str, *, path: str | None = None, line: int | None = None,
                 required: Iterable[str] = ()) -> dict[str, Any]:
    """One JSONL line → a dict, or `InputError` (malformed JSON, not an object, NaN/Infinity,
    a required field missing or empty)."""
    seen_constant = []

    def constant(name: str) -> float:
        seen_constant.append(name)
        return float(name.replace("Infinity", "inf"))

    duplicated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items) and not duplicated:
            seen: set[str] = set()
            duplicated.extend(k for k, _ in items if k in seen or seen.add(k))
        return out

    try:
        rec = json.loads(text, parse_constant=constant, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=path, line=line) from None
    except RecursionError:
        raise InputError("malformed JSON (nested too deeply)", path=path, line=line) from None
    except ValueError as exc:  # an integer of more than 4,300 digits (Python's int_max_str_digits)
        raise InputError(f"malformed JSON ({_value_error(exc)})", path=path, line=line) from None
    if not isinstance(rec, dict):
        raise InputError(f"expected a JSON object, got {type(rec).__name__}", path=path, line=line)
    if duplicated:  # JSON would silently keep the last value
        raise InputError("key given twice in one object", path=path, line=line, field=duplicated[0])
    if seen_constant:
        where = _nonfinite_path(rec)
        raise InputError(f"{seen_constant[0]} is not a valid JSON value", path=path, line=line,
                         field=where)
    for name in required:
        value = rec.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError("missing or empty", path=path, line=line, field=name)
    return rec


@overload
def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = ..., skip_bad: bool = ...,
               stats: ReadStats | None = ..., with_lines: Literal[False] = ...) -> Iterator[dict[str, Any]]: ...


@overload
def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = ..., skip_bad: bool = ...,
               stats: ReadStats | None = ..., with_lines: Literal[True]) -> Iterator[tuple[int, dict[str, Any]]]: ...


def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None, with_lines: bool = False) -> Iterator[Any]:
    """Yield the records of a JSONL (or .jsonl.gz) file, validated line by line; with
    `with_lines`, (file line number, record) pairs, so field errors found later can name the line
    without reading the file again.

    Each record must be a JSON object holding every field in `required` (non-empty).
    A bad line (malformed JSON, not UTF-8, NaN/Infinity) raises `InputError(path, line, field)`,
    or with `skip_bad` is skipped and counted in `stats`. Blank lines are ignored; the file line
    of each record yielded is appended to `stats.lines`.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "r.jsonl")
    >>> _ = open(p, "w").write('{"id": "a"}\\n\\n{"id": "b"}\\n')
    >>> [line for line, rec in iter_jsonl(p, with_lines=True)]
    [1, 3]
    """
    stats = stats if stats is not None else ReadStats()
    required = tuple(required)
    p = str(path)
    for lineno, text in iter_lines(path):
        try:
            if isinstance(text, InputError):
                raise text
            if not text.strip():
                continue
            rec = parse_record(text, path=p, line=lineno, required=required)
        except InputError as err:
            if not skip_bad:
                raise
            stats.skipped += 1
            stats.reasons.append(str(err))
            continue
        stats.read += 1
        stats.lines.append(lineno)
        yield (lineno, rec) if with_lines else rec


def iter_jsonl_numbered(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
                        stats: ReadStats | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each record: the former name of `iter_jsonl(..., with_lines=True)`."""
    return iter_jsonl(path, required=required, skip_bad=skip_bad, stats=stats, with_lines=True)


def read_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Read a whole JSONL file (see `iter_jsonl`). Validation happens before any work starts."""
    return list(iter_jsonl(path, required=required, skip_bad=skip_bad, stats=stats))
