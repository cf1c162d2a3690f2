"""Append-only JSONL outputs that survive an interruption: `scan_output` (a read-only check of an
existing output) and `ResumableWriter`. A good record is never deleted: only a torn *last* line
(an interrupted append) is truncated; a bad line in the middle, or a file that is not this
command's output, is refused."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longshort.errors import InputError
from longshort.io.fields import _json_type


@dataclass
class OutputScan:
    """What an existing append-only output file holds (see `scan_output`)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    done_ids: set[str] = field(default_factory=set)
    size: int = 0  # bytes in the file
    keep_bytes: int = 0  # bytes to keep (less than `size` only when the last line is torn)
    needs_newline: bool = False  # the last kept line lacks its newline (complete, or left bad)
    skipped: list[str] = field(default_factory=list)  # bad lines left in place (skip_bad)


def scan_output(path: str | os.PathLike, *, expect: Iterable[str] = (), skip_bad: bool = False,
                option: str = "--out") -> OutputScan:
    """Read-only check of an existing append-only JSONL output (nothing is changed).

    Every complete line must be a JSON object with an `id` and the fields in `expect` (what the
    command writes, so an unrelated JSONL is refused). A blank, torn or malformed line in the
    middle raises `InputError` naming it, or with `skip_bad` is left in place and skipped. Only
    a torn last line (no newline, starts like one of our records) is marked to be truncated: that
    is the record in flight when a run was killed.
    """
    p = Path(path)
    scan = OutputScan()
    if not p.exists() or str(p) == os.devnull:
        return scan
    expect = tuple(expect)
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=str(p)) from None
    scan.size = scan.keep_bytes = len(data)
    pieces = data.split(b"\n")
    last = pieces.pop()  # after the final newline: b"" when the file ends with one
    offset = 0

    def bad(msg: str, lineno: int, fld: str | None = None) -> None:
        err = InputError(f"{msg}; refusing to append to {option} (fix or move the file"
                         + (", or pass --skip-bad to leave the line and go on)" if fld != "expect" else ")"),
                         path=str(p), line=lineno, field=None if fld == "expect" else fld)
        if skip_bad and fld != "expect":
            scan.skipped.append(str(err))
            return
        raise err

    def take(raw: bytes, lineno: int) -> bool:
        """Check one line; True if it is a good record (recorded in scan)."""
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            bad("blank line", lineno)
            return False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad("not UTF-8 text", lineno)
            return False
        try:
            rec = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer of 4,300+ digits
            bad("not a JSON record (torn or malformed line)", lineno)
            return False
        if not isinstance(rec, dict):
            bad(f"not a JSON object ({_json_type(rec)})", lineno)
            return False
        if rec.get("id") is None or isinstance(rec["id"], dict | list):
            bad("record without an id", lineno, "id")
            return False
        missing = [f for f in expect if f not in rec]
        if missing:
            raise InputError(f"record lacks field '{missing[0]}', so the file is not this command's output; "
                             f"refusing to append to {option} (choose another path)", path=str(p), line=lineno)
        scan.records.append(rec)
        scan.done_ids.add(str(rec["id"]))
        return True

    for lineno, raw in enumerate(pieces, start=1):
        take(raw.rstrip(b"\r"), lineno)
        offset += len(raw) + 1
    if last:
        lineno = len(pieces) + 1
        stripped = last.lstrip()
        try:
            complete = isinstance(json.loads(last), dict)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a 4,300-digit integer
            complete = False
        if complete:
            take(last, lineno)  # a complete record that only lacks its newline
            scan.needs_newline = True
        elif stripped.startswith(b"{"):
            scan.keep_bytes = offset  # torn last line: the record in flight when the run died
        else:
            take(last, lineno)  # raises (or, with skip_bad, leaves it: we then add a newline)
            scan.needs_newline = True
    if scan.skipped and not scan.records:
        raise InputError(f"holds no records of this command's output ({len(scan.skipped)} bad line(s)); "
                         f"refusing to append to {option} (choose another path)", path=str(p))
    return scan


class ResumableWriter:
    """Append-only JSONL output keyed by record `id`, resumable after an interruption.

    On open the existing file is checked (`scan_output`): complete lines are kept and their ids
    collected in `done_ids`; only a torn last line (the record in flight when the run died) is
    truncated away; a bad line in the middle, or records that lack the `expect`ed fields of this
    command's output, raise `InputError` and change nothing. With `resume=False` the old records
    are replaced, but only when the first new record is written. Each `write` appends one line
    and flushes + fsyncs it.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
    >>> with ResumableWriter(p) as w: w.write({"id": "a", "x": 1})
    >>> ResumableWriter(p).done_ids
    {'a'}
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = True, expect: Iterable[str] = (),
                 skip_bad: bool = False):
        self.path = Path(path)
        self.done_ids: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self._fh = None
        self._fresh = False
        self._needs_newline = False
        scan = scan_output(self.path, expect=expect, skip_bad=skip_bad)
        self.skipped = scan.skipped
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self._fresh = self.path.exists() and scan.size > 0
            return
        self.done_ids, self.records = scan.done_ids, scan.records
        self._needs_newline = scan.needs_newline
        if scan.keep_bytes != scan.size:
            with open(self.path, "r+b") as fh:
                fh.truncate(scan.keep_bytes)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:  # before the file is touched: a record that cannot be written leaves the output as it was
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            rid = record.get("id")
            raise InputError(f"record {rid!r} holds text that is not valid Unicode (a lone surrogate at "
                             f"character {exc.start + 1} of its JSON); nothing of it was written",
                             path=str(self.path)) from None
        if self._fh is None:
            self._fh = open(self.path, "w" if self._fresh else "a", encoding="utf-8")
            if self._needs_newline and not self._fresh:
                self._fh.write("\n")
            self._fresh = self._needs_newline = False
        self._fh.write(line)
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
