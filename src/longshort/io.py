"""JSONL records, atomic writes, resumable appends and the checks on user files (DESIGN §8).

- `read_jsonl(path, required=..., skip_bad=...)` validates every line and raises `InputError`
  naming the file, line and field; with `skip_bad` bad lines are skipped and counted. Bytes
  that are not UTF-8 and the non-JSON constants `NaN`/`Infinity` are bad lines like any other.
- `ResumableWriter` appends one record per line and flushes it, so an interrupted run loses at
  most the record in flight; `done_ids` lets a stage skip records already written. It never
  deletes a good record: only a torn *last* line (an interrupted append) is truncated; a bad line
  in the middle, or a file that is not this command's output, is refused (`scan_output`).
- `check_output_file` / `check_output_dir`: refuse an output path that a run would damage
  (the input itself, a directory where a file goes, a file that is not ours), before any work.
- `read_yaml(path)`: recipes and config files without aliases, with capped depth and size,
  duplicated keys refused.
- `write_json_atomic` / `write_text_atomic` write through a temp file + rename.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longshort.errors import InputError

# A problem (or any one text field) longer than this is refused up front: 100,000 characters is
# about 25,000 tokens, beyond the context of the small models this project runs and far beyond any
# benchmark problem (the longest MATH500/GPQA problems are a few thousand characters).
MAX_TEXT_CHARS = 100_000
YAML_MAX_BYTES = 1_000_000  # recipes are a few KB; a bigger file is not a recipe
YAML_MAX_DEPTH = 32  # recipes nest 3-4 levels


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


def check_input_file(path: str | os.PathLike, what: str = "JSONL file") -> Path:
    """The path of a readable regular file, or `InputError` naming it (missing, a directory,
    a FIFO or device, unreadable)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError("file not found", path=str(p)) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=str(p)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"is a directory, expected a {what}", path=str(p))
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file, expected a {what}", path=str(p))
    if not os.access(p, os.R_OK):
        raise InputError("permission denied (cannot read)", path=str(p))
    return p


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


def iter_jsonl_numbered(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
                        stats: ReadStats | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each record of a JSONL (or .jsonl.gz) file; see `iter_jsonl`."""
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
        yield lineno, rec


def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL (or .jsonl.gz) file, validated line by line.

    Each record must be a JSON object holding every field in `required` (non-empty).
    A bad line (malformed JSON, not UTF-8, NaN/Infinity) raises `InputError(path, line, field)`,
    or with `skip_bad` is skipped and counted in `stats`. Blank lines are ignored; the file line
    of each record yielded is appended to `stats.lines`.
    """
    for _, rec in iter_jsonl_numbered(path, required=required, skip_bad=skip_bad, stats=stats):
        yield rec


def read_jsonl(path: str | os.PathLike, *, required: Iterable[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> list[dict[str, Any]]:
    """Read a whole JSONL file (see `iter_jsonl`). Validation happens before any work starts."""
    return list(iter_jsonl(path, required=required, skip_bad=skip_bad, stats=stats))


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


# ----------------------------------------------------------------------------- output paths


def _nearest_existing(p: Path) -> Path:
    q = p.absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _check_creatable(p: Path) -> None:
    """The directories above `p` exist or can be made, and the nearest one is writable."""
    anc = _nearest_existing(p.parent)
    if not anc.is_dir():
        raise InputError(f"cannot create it: {anc} is not a directory", path=str(p))
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"cannot create it: {anc} is not writable", path=str(p))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      option: str = "--out") -> Path:
    """Refuse an output file path a run could damage, before any work: one of the inputs,
    a directory, something that is not a regular file, or a place that cannot be written."""
    p = Path(out)
    for inp in inputs:
        if inp is not None and _same_file(p, Path(inp)):
            raise InputError(f"{option} is the input file; choose another output path", path=str(p))
    if p.is_dir():
        raise InputError(f"is a directory; {option} expects a file path", path=str(p))
    if p.exists() or p.is_symlink():
        if not p.exists():
            raise InputError(f"is a dangling symbolic link; {option} expects a file path", path=str(p))
        if not p.is_file() and str(p) != os.devnull:
            raise InputError(f"not a regular file; {option} expects a file path", path=str(p))
        if not os.access(p, os.W_OK):
            raise InputError("not writable (permission denied)", path=str(p))
    else:
        _check_creatable(p)
    return p


def check_output_dir(out: str | os.PathLike, *, option: str = "--out") -> Path:
    """Refuse an output directory path that is an existing file or cannot be created/written."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise InputError(f"exists and is not a directory; {option} expects a directory", path=str(p))
    if p.is_symlink() and not p.exists():
        raise InputError(f"is a dangling symbolic link; {option} expects a directory", path=str(p))
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError("directory not writable (permission denied)", path=str(p))
    else:
        _check_creatable(p)
    return p


def check_new_file(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                   option: str = "--out") -> Path:
    """An output file that a command writes whole: like `check_output_file`, and an existing
    non-empty file is refused (never overwrite what a user may need)."""
    p = check_output_file(out, inputs=inputs, option=option)
    if p.is_file() and p.stat().st_size > 0:
        raise InputError(f"already exists; {option} will not overwrite it (choose another path or delete it)",
                         path=str(p))
    return p


# ----------------------------------------------------------------------------- atomic writes


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


# ----------------------------------------------------------------------------- resumable output


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
        except (json.JSONDecodeError, RecursionError):
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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
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
        if self._fh is None:
            self._fh = open(self.path, "w" if self._fresh else "a", encoding="utf-8")
            if self._needs_newline and not self._fresh:
                self._fh.write("\n")
            self._fresh = self._needs_newline = False
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


# ----------------------------------------------------------------------------- YAML


def read_yaml(path: str | os.PathLike, *, max_bytes: int = YAML_MAX_BYTES, max_depth: int = YAML_MAX_DEPTH) -> Any:
    """Parse a YAML config file safely: no anchors/aliases (no alias bombs), at most `max_depth`
    levels of nesting and `max_bytes` bytes, and a key given twice in one mapping is an error
    (YAML would silently keep the last one). Any problem is an `InputError` naming the file and
    line."""
    import yaml

    p = check_input_file(path, "YAML file")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"too large for a config file ({size:,} bytes; at most {max_bytes:,})", path=str(p))
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", path=str(p), line=line) from None
    try:
        return yaml.load(text, Loader=_loader_class(max_depth))  # noqa: S506 - our SafeLoader subclass
    except InputError as exc:
        raise InputError(exc.message, path=str(p), line=exc.line, field=exc.field) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", path=str(p), line=line) from None
    except RecursionError:
        raise InputError("nested too deeply", path=str(p)) from None


def compose_yaml(text: str, max_depth: int = YAML_MAX_DEPTH):
    """The YAML node tree of `text` with the same limits as `read_yaml` (for line lookups)."""
    import yaml

    return yaml.compose(text, Loader=_loader_class(max_depth))  # noqa: S506


def _loader_class(max_depth: int):
    import yaml
    from yaml.events import AliasEvent, CollectionStartEvent

    class _Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                raise InputError("YAML anchors and aliases (&name / *name) are not allowed in config files",
                                 line=event.start_mark.line + 1)
            nested = isinstance(event, CollectionStartEvent)
            if nested:
                self._depth += 1
                if self._depth > max_depth:
                    raise InputError(f"nested more than {max_depth} levels deep", line=event.start_mark.line + 1)
            try:
                return super().compose_node(parent, index)
            finally:
                if nested:
                    self._depth -= 1

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise InputError("a mapping key must be a plain value", line=key_node.start_mark.line + 1) from None
                if key in seen:
                    raise InputError(f"key {key!r} is given twice (first on line {seen[key]})",
                                     line=key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return _Loader
