"""JSONL records, atomic writes and resumable appends (DESIGN §8).

- `read_jsonl(path, required=..., skip_bad=...)` validates every line and raises `InputError`
  naming the file, line and field; with `skip_bad` bad lines are skipped and counted.
- `ResumableWriter` appends one record per line and flushes it, so an interrupted run loses at
  most the record in flight; `done_ids` lets a stage skip records already written.
- `write_json_atomic` / `write_text_atomic` write through a temp file + rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longshort.errors import InputError


@dataclass
class ReadStats:
    """How many lines were read and how many bad ones were skipped (with their reasons)."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL (or .jsonl.gz) file, validated line by line.

    Each record must be a JSON object holding every field in `required` (non-empty).
    A bad line raises `InputError(path, line, field)`, or with `skip_bad` is skipped and
    counted in `stats`. Blank lines are ignored.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path=str(p))
    if p.is_dir():
        raise InputError("is a directory, expected a JSONL file", path=str(p))
    stats = stats if stats is not None else ReadStats()
    required = tuple(required)
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise InputError(f"expected a JSON object, got {type(rec).__name__}",
                                     path=str(p), line=lineno)
                for name in required:
                    value = rec.get(name)
                    if value is None or (isinstance(value, str) and not value.strip()):
                        raise InputError("missing or empty", path=str(p), line=lineno, field=name)
            except json.JSONDecodeError as exc:
                err = InputError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=str(p),
                                 line=lineno)
                if not skip_bad:
                    raise err from None
                stats.skipped += 1
                stats.reasons.append(str(err))
                continue
            except InputError as err:
                if not skip_bad:
                    raise
                stats.skipped += 1
                stats.reasons.append(str(err))
                continue
            stats.read += 1
            yield rec


def read_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Read a whole JSONL file (see `iter_jsonl`). Validation happens before any work starts."""
    return list(iter_jsonl(path, required=required, skip_bad=skip_bad, stats=stats))


def ensure_ids(records: list[dict[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    """Give every record a stable string `id` (its existing one, else `prefix` + line index)."""
    seen: set[str] = set()
    for i, rec in enumerate(records):
        rid = str(rec.get("id", f"{prefix}{i}"))
        if rid in seen:
            raise InputError(f"duplicate id {rid!r}", line=i + 1, field="id")
        seen.add(rid)
        rec["id"] = rid
    return records


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory and an atomic rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure_atomic(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG through a temp file + rename (no half-written plots)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, p)
    return p


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class ResumableWriter:
    """Append-only JSONL output keyed by record `id`, resumable after an interruption.

    On open, existing complete lines are kept and their ids collected in `done_ids`; a torn
    last line (the record in flight when the run died) is truncated away. Each `write` appends
    one line and flushes + fsyncs it.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
    >>> with ResumableWriter(p) as w: w.write({"id": "a", "x": 1})
    >>> ResumableWriter(p).done_ids
    {'a'}
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done_ids: set[str] = set()
        self.records: list[dict[str, Any]] = []
        if resume and self.path.exists():
            self._load_existing()
        elif not resume and self.path.exists():
            self.path.unlink()
        self._fh = None

    def _load_existing(self) -> None:
        good_bytes = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn line from an interrupted write
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                good_bytes += len(raw)
                if isinstance(rec, dict) and "id" in rec:
                    self.done_ids.add(str(rec["id"]))
                    self.records.append(rec)
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if "id" in record:
            self.done_ids.add(str(record["id"]))
        self.records.append(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResumableWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
