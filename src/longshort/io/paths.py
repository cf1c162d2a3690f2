"""Checks on the paths a command reads and writes, made before any work starts: an input must be
a readable regular file; an output path that a run would damage (the input itself, a directory
where a file goes, a file that is not ours, a place that cannot be written) is refused."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from longshort.errors import InputError


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


def check_replaceable(out: str | os.PathLike, *, command: str, ours: Callable[[bytes], bool],
                      inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out",
                      head_bytes: int = 1_000_000) -> Path:
    """An output file that a command writes whole and may write again: like `check_output_file`,
    and an existing non-empty file is replaced only when it is an earlier output of `command`
    (`ours` says so from the file's first `head_bytes`: `starts_with`, `first_record_has`);
    anything else (a user's notes under that name) is refused, untouched."""
    p = check_output_file(out, inputs=inputs, option=option)
    if p.is_file() and p.stat().st_size > 0:
        with open(p, "rb") as fh:
            head = fh.read(head_bytes)
        if not ours(head):
            raise InputError(f"exists and is not an earlier `longshort {command}` output; will not overwrite it "
                             f"(move it or choose another {option})", path=str(p))
    return p


def starts_with(prefix: bytes) -> Callable[[bytes], bool]:
    """`check_replaceable`'s test for a file format with a fixed opening (a PNG, a table header)."""
    return lambda head: head.startswith(prefix)


def first_record_has(*fields: str, whole: bool = False) -> Callable[[bytes], bool]:
    """`check_replaceable`'s test for JSONL (the first line) or, with `whole`, one JSON document:
    a JSON object holding every one of `fields`."""
    def ours(head: bytes) -> bool:
        try:
            rec = json.loads((head if whole else head.split(b"\n", 1)[0]).decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, a torn line
            return False
        return isinstance(rec, dict) and all(f in rec for f in fields)
    return ours
