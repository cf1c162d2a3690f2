"""Answer grading: extract the final answer of a response and judge it against the gold answer.

Rules, in order (each has a unit test in tests/test_grading.py):

1. **Extraction**: the last `\\boxed{…}` (or `\\fbox{…}`) wins; else a GSM8K-style `#### N`;
   else "the (final) answer is X" / "Answer: X"; else the last number in the text.
2. **Normalisation** (both sides): `\\left`/`\\right`, `\\dfrac`→`\\frac`, spacing commands,
   dollar signs, degrees (`^\\circ`, `°`), percent signs (`50\\%` ≡ `50`), thousands separators
   (`1,000` / `1{,}000` ≡ `1000`), trailing units (`5 \\text{ cm}` ≡ `5 cm` ≡ `5`).
3. **Exact match** of the normalised strings (case- and space-insensitive) is correct; this is
   also how text answers (`\\text{Evelyn}`) are judged.
4. **math-verify** (`parse` + `verify`) on the normalised strings otherwise: `\\frac{1}{2}` ≡
   `1/2` ≡ `0.5`, `4\\frac{2}{3}` ≡ `\\frac{14}{3}`, intervals, sets, tuples, `x = 3` ≡ `3`.
5. **Multiple choice** (`choices` given): the chosen letter (`\\boxed{C}`, `(C)`, "answer is C",
   or the text of a choice) must equal the gold letter.

Time limit: math-verify's own timeout uses `signal.alarm`, which only works in the main
thread (elsewhere it raises ValueError) and only counts whole seconds per operation. We turn
it off and enforce one deadline per graded item ourselves: in the main thread with
`signal.setitimer` (float seconds, an exception derived from BaseException so no
`except Exception` inside sympy swallows it); in any other thread the item is graded in a
persistent helper process that is killed and restarted when it overruns, so even a hang inside
C code cannot stall a run. A timed-out item is graded wrong and flagged `timeout`. Because an
exception raised in the middle of one of sympy's lazy imports would leave sympy half-imported,
every lazy import is done once before the first deadline is armed, and after a timeout a health
check runs; a damaged process sends the rest of its grading to a fresh helper process.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from longshort.evaluation.answers import (  # noqa: F401 - re-exported: grading's public names
    LETTERS,
    extract_answer,
    extract_boxed,
    extract_choice,
    gold_choice,
    gold_letter,
    match_key,
    normalize_answer,
)

# math-verify warns once when its own timeout is disabled (we enforce ours) and logs every
# comparison timeout; both are noise for us.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 1000  # longer "answers" are not parsed symbolically (exact match only)


class GradingConfig(BaseModel):
    """How answers are judged."""

    timeout: float = Field(5.0, gt=0, le=3600, description=(
        "Seconds allowed to grade one item (parse + verify); 5 s is math-verify's own default, "
        "far above the ~5 ms a normal answer takes, so only pathological answers are cut off; at "
        "most an hour (an infinite timeout would let one pathological answer hang an evaluation)."))
    float_rounding: int = Field(6, ge=0, description=(
        "Decimal places numbers are rounded to before comparing (math-verify default): "
        "0.333333 matches 1/3, 4.67 does not match 14/3."))
    exact_match_first: bool = Field(True, description=(
        "Accept a normalised string match before calling math-verify: fast, and the only way "
        "text answers are judged. Off = math-verify alone (used to test math-verify's path)."))


@dataclass
class GradeResult:
    """The verdict on one response: `correct`, the answer we extracted, and how we decided
    (`exact`, `math-verify`, `choice`, `no-answer`, `mismatch`, `timeout`)."""

    correct: bool
    extracted: str | None
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# math-verify


@lru_cache(maxsize=4096)
def _parse(expr: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(parse(f"${expr}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                       parsing_timeout=None))


def _math_verify_equal(pred: str, gold: str, float_rounding: int) -> bool:
    from math_verify import verify

    gold_p, pred_p = _parse(gold), _parse(pred)
    if not gold_p or not pred_p:
        return False
    return bool(verify(list(gold_p), list(pred_p), float_rounding=float_rounding, timeout_seconds=None))


def _grade_unbounded(prediction: str, gold: str, choices: list[str] | None,
                     float_rounding: int, exact_match_first: bool) -> GradeResult:
    """The grading rules without a time limit (callers wrap this in a deadline)."""
    if choices:
        letter = extract_choice(prediction, choices)
        want = gold_letter(gold, choices)
        return GradeResult(letter is not None and letter == want, letter,
                           "choice" if letter is not None else "no-answer")
    answer = extract_answer(prediction)
    if answer is None:
        return GradeResult(False, None, "no-answer")
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        # no regex normalisation or symbolic parse of huge strings: plain comparison only
        same = " ".join(answer.split()) == " ".join(gold.split())
        return GradeResult(same, answer, "exact" if same else "mismatch")
    if exact_match_first and match_key(answer) == match_key(gold) and match_key(gold):
        return GradeResult(True, answer, "exact")
    pred_n, gold_n = normalize_answer(answer), normalize_answer(gold)
    ok = _math_verify_equal(pred_n, gold_n, float_rounding)
    if not ok and (pred_n != answer.strip() or gold_n != gold.strip()):
        # normalisation can hurt as well as help (e.g. a \text{} that was not a unit)
        ok = _math_verify_equal(answer.strip(), gold.strip(), float_rounding)
    return GradeResult(ok, answer, "math-verify" if ok else "mismatch")


# ---------------------------------------------------------------------------------------------
# Deadlines


class _Deadline(BaseException):
    """Raised by our SIGALRM handler; BaseException so `except Exception` cannot swallow it."""


# An exception raised asynchronously in the middle of a lazy import (sympy imports parts of
# itself on first use) leaves that module half-initialised and breaks every later parse in this
# process. So: (1) all lazy imports are done once, with no deadline armed, before the first
# deadline (`_warm_up`); (2) after any timeout a health check runs, and if this process is
# damaged anyway, the rest of its grading goes to a fresh helper process.
_STATE = {"warm": False, "damaged": False}
_WARM_UP_PAIRS = [(r"\frac{1}{2}", "0.5"), ("x = 3", "3"), (r"[-2, 7]", r"(-\infty, 0) \cup (0, \infty)"),
                  (r"\{1, 2\}", r"(1, 2)"), (r"2\sqrt{3}", r"\sqrt{12}"), (r"2^{2^{5}}", "5"),
                  (r"\text{Evelyn}", r"50\%"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"3\pi i")]


def _warm_up() -> None:
    if not _STATE["warm"]:
        for a, b in _WARM_UP_PAIRS:
            _math_verify_equal(a, b, 6)
        _STATE["warm"] = True


def _healthy() -> bool:
    """Does math-verify still work in this process? (uncached: the cache may hold bad parses)"""
    from math_verify import parse, verify

    try:
        return bool(verify(parse("$0.5$", parsing_timeout=None), parse(r"$\frac{1}{2}$", parsing_timeout=None),
                           timeout_seconds=None))
    except Exception:
        return False


def _can_use_signals() -> bool:
    return (not _STATE["damaged"] and threading.current_thread() is threading.main_thread()
            and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0)


def _grade_with_signal(args: tuple, timeout: float) -> GradeResult:
    _warm_up()
    fired = False

    def handler(signum, frame):
        nonlocal fired
        fired = True
        raise _Deadline()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result = _grade_unbounded(*args)
    except _Deadline:
        result = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if result is None or fired:
        if not _healthy():
            _parse.cache_clear()
            _STATE["damaged"] = True
        # nothing is re-run outside the deadline (extraction itself may be what took so long)
        return GradeResult(False, None, "timeout")
    return result


def _worker_stdio() -> None:  # pragma: no cover - runs in the helper process
    """Helper-process loop: one JSON request per stdin line, one JSON verdict per stdout line."""
    import json
    import sys

    out = sys.stdout
    sys.stdout = sys.stderr  # only our protocol goes to the real stdout
    _warm_up()  # before "ready": the parent's per-item wait must not include imports
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        result = _grade_with_signal(tuple(msg["args"]), float(msg["timeout"]))
        out.write(json.dumps(result.to_dict()) + "\n")
        out.flush()
        if _STATE["damaged"]:
            return  # this helper's sympy is damaged: exit, the parent starts a fresh one


class _WorkerGrader:
    """A helper process that grades items for threads that cannot use signals.

    A plain `python -c` subprocess talking JSON lines (not multiprocessing: spawn/forkserver
    re-import the caller's `__main__`, and fork is unsafe in a threaded process with torch).
    """

    START_TIMEOUT = 120.0  # importing sympy on a busy machine can take a while

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _readline(self, timeout: float) -> str | None:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        return line.decode() if line else None

    def _start(self) -> None:
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from longshort.evaluation.grading import _worker_stdio; _worker_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        if self._readline(self.START_TIMEOUT) != "ready\n":
            self._kill()
            raise RuntimeError("grading helper process did not start")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
        self._proc = None

    def grade(self, args: tuple, timeout: float) -> GradeResult:
        import json

        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps({"args": list(args), "timeout": timeout}) + "\n").encode())
                self._proc.stdin.flush()
                # the helper enforces `timeout` itself; the margin covers a hang inside C code
                line = self._readline(timeout + 2.0)
                if line:
                    return GradeResult(**json.loads(line))
            except (OSError, ValueError):
                pass
            self._kill()
            return GradeResult(False, None, "timeout")

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _WorkerGrader()
atexit.register(_WORKER.close)


# ---------------------------------------------------------------------------------------------
# Public API


def grade_detail(prediction: str, gold: str, *, choices: list[str] | None = None,
                 timeout: float | None = None, config: GradingConfig | None = None) -> GradeResult:
    """Judge `prediction` (a full response or a bare answer) against `gold`, within a time limit.

    `choices` switches to multiple-choice grading by letter. `timeout` overrides
    `config.timeout`. Safe to call from any thread.
    """
    cfg = config or GradingConfig()
    limit = float(timeout if timeout is not None else cfg.timeout)
    args = (str(prediction or ""), str(gold), list(choices) if choices else None,
            cfg.float_rounding, cfg.exact_match_first)
    if _can_use_signals():
        return _grade_with_signal(args, limit)
    return _WORKER.grade(args, limit)


def grade(prediction: str, gold: str, *, choices: list[str] | None = None, timeout: float = 5.0) -> bool:
    """True when `prediction` answers `gold` (see module docstring for the rules).

    >>> grade(r"... so $x = \\boxed{\\dfrac{1}{2}}$", "0.5")
    True
    >>> grade("#### 1,000", "1000")
    True
    >>> grade(r"\\boxed{B}", "C", choices=["a", "b", "c", "d"])
    False
    """
    return grade_detail(prediction, gold, choices=choices, timeout=timeout).correct
