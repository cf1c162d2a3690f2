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
import re
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

# math-verify warns once when its own timeout is disabled (we enforce ours) and logs every
# comparison timeout; both are noise for us.
logging.getLogger("math_verify").setLevel(logging.ERROR)

LETTERS = "ABCDEFGHIJ"
MAX_ANSWER_CHARS = 1000  # longer "answers" are not parsed symbolically (exact match only)


class GradingConfig(BaseModel):
    """How answers are judged."""

    timeout: float = Field(5.0, gt=0, description=(
        "Seconds allowed to grade one item (parse + verify); 5 s is math-verify's own default, "
        "far above the ~5 ms a normal answer takes, so only pathological answers are cut off."))
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
# Extraction


def _brace_pairs(text: str) -> dict[int, int]:
    """Position of each `{` → position of its matching `}` (unmatched ones absent), in one pass
    (linear even for thousands of nested, unclosed `\\boxed{`)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text):
        if m.group(0) == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every `\\boxed{…}` / `\\fbox{…}` / `\\boxed X`, in order."""
    spans: list[tuple[int, int]] = []
    matches = list(re.finditer(r"\\(?:boxed|fbox)\s*", text))
    if not matches:
        return spans
    pairs = _brace_pairs(text)
    for m in matches:
        i = m.end()
        if i < len(text) and text[i] == "{":
            if i in pairs:
                spans.append((i + 1, pairs[i]))
        elif m.group(0).endswith((" ", "\t")):
            word = re.compile(r"[^\s$]+").match(text, i)  # "\boxed 5" form
            if word:
                spans.append((i, word.end()))
    return spans


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{…}` / `\\fbox{…}` / `\\boxed X` in order (nested braces ok)."""
    return [text[a:b] for a, b in _boxed_spans(text)]


def extract_boxed(text: str) -> str | None:
    """The last non-empty boxed answer in `text`, else None.

    >>> extract_boxed(r"so $\\boxed{\\frac{1}{2}}$, not \\boxed{}")
    '\\\\frac{1}{2}'
    """
    for a, b in reversed(_boxed_spans(text)):
        content = text[a:b]
        if content.strip():
            return content.strip()
    return None


_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _clean_span(value: str) -> str:
    value = value.strip().strip("*").strip()
    if "$" in value:  # "$\frac{1}{2}$ dollars." → the first math segment
        m = re.search(r"\$+([^$]+)\$+", value)
        if m:
            return m.group(1).strip()
    value = re.split(r"(?<!\d)\.(?!\d)|\n|;|\s+(?:because|since|as|so|which)\s", value)[0]
    return value.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a response: boxed first, then `#### N`, then "answer is X", then
    the whole text when it is a bare one-line answer, then the last number; None when there is
    nothing answer-like.

    >>> extract_answer(r"First \\boxed{2}, finally \\boxed{\\frac{3}{4}}.")
    '\\\\frac{3}{4}'
    >>> extract_answer("She makes 9 * 2 = $<<9*2=18>>18 a day.\\n#### 18")
    '18'
    >>> extract_answer("So the answer is $\\\\pi/2$.")
    '\\\\pi/2'
    >>> extract_answer("She has 3 boxes. Each holds 1,250 apples, 3,750 in all.")
    '3,750'
    >>> extract_answer(r"\\frac{1}{2}")
    '\\\\frac{1}{2}'
    >>> extract_answer("I do not know") is None
    True
    """
    if not text or not text.strip():
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    matches = list(_ANSWER_IS.finditer(text))
    for m in reversed(matches):
        value = _clean_span(m.group(1))
        if value:
            return value
    if _is_bare(text):
        return _clean_span(text) or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _is_bare(text: str) -> bool:
    """A short one-line answer rather than prose: `\\frac{1}{2}`, `x = 3`, `Evelyn`, `18 dollars`."""
    t = text.strip()
    if "\n" in t or len(t) > 100:
        return False
    words = re.sub(r"\\[a-zA-Z]+", " ", t)
    return not re.search(r"[A-Za-z]{2,}[\s,;:]+[A-Za-z]{2,}", words)


# ---------------------------------------------------------------------------------------------
# Normalisation

_UNIT_WRAPPERS = re.compile(
    r"\\(?:text|mbox|mathrm|textbf|textnormal)\s*\{\s*([a-zA-Z][a-zA-Z .]*)\}(\^\s*\{?\d\}?)?")
_CONNECTIVES = {"and", "or", "if", "for", "where", "when", "to", "is", "otherwise"}


def _drop_unit(m: re.Match) -> str:
    """A `\\text{word}` (plus a `^2`) is a unit unless it is a connective like "and"."""
    return m.group(0) if m.group(1).strip().lower() in _CONNECTIVES else ""


_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?")
_TRAILING_UNITS = re.compile(
    r"^([^a-zA-Z\\]*\d[^a-zA-Z\\]*?)\s+(?:[a-zA-Z]{2,}\.?\s*){1,3}(?:\^\{?\d\}?)?$")


def normalize_answer(answer: str) -> str:
    """Light, meaning-preserving clean-up of an answer string (spaces kept).

    >>> normalize_answer(r"\\$1{,}250.50")
    '1250.50'
    >>> normalize_answer(r"30^{\\circ}")
    '30'
    >>> normalize_answer(r"12 \\text{ cm}^2")
    '12'
    >>> normalize_answer(r"\\left( 3, \\dfrac{\\pi}{2} \\right)")
    '( 3, \\\\frac{\\\\pi}{2} )'
    """
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\[!,;:]|\\ |~", " ", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\circ", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\s*\{\s*\}", "", s)
    # units: a \text{...} of plain words after something else is a unit ("5 \text{ cm}")
    stripped = _UNIT_WRAPPERS.sub(_drop_unit, s).strip()
    if stripped != s and re.search(r"\d", stripped):
        s = stripped
    m = _TRAILING_UNITS.match(s)
    if m:
        s = m.group(1)
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace("{,}", "").replace(",", "")
    return s


def _key(answer: str) -> str:
    """Comparison key for exact matching: normalised, no spaces/braces around text, lowercase."""
    s = normalize_answer(answer)
    s = re.sub(r"\\(?:text|mbox|mathrm|textbf)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", "", s).lower()
    m = re.fullmatch(r"\(([a-z])\)", s)
    return m.group(1) if m else s


# ---------------------------------------------------------------------------------------------
# Multiple choice


def extract_choice(text: str, choices: list[str] | None = None) -> str | None:
    """The letter a response chose: `\\boxed{C}`, `(C)`, "answer is C", or a choice's text.

    >>> extract_choice(r"... so the answer is \\boxed{\\text{(B)}}")
    'B'
    >>> extract_choice("The answer is C.")
    'C'
    >>> extract_choice(r"\\boxed{10^-4 eV}", ["10^-11 eV", "10^-8 eV", "10^-4 eV"])
    'C'
    """
    n = len(choices) if choices else len(LETTERS)
    valid = LETTERS[:n]

    def as_letter(candidate: str) -> str | None:
        c = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", candidate).strip()
        c = c.strip("$*").strip()
        m = re.fullmatch(r"\(?([A-Ja-j])\)?[.:)]?(?:\s.*)?", c)
        if m and m.group(1).upper() in valid and (len(c) <= 3 or c[1:3] in (") ", ". ", ": ")):
            return m.group(1).upper()
        if choices:
            keys = [_key(str(x)) for x in choices]
            if _key(c) in keys:
                return valid[keys.index(_key(c))]
        return None

    boxed = extract_boxed(text)
    if boxed is not None:
        letter = as_letter(boxed)
        if letter:
            return letter
    # "the answer is (C)" outranks "option B"; the letter itself must be upper case ("answer is a …")
    for word in ("answer", "choice|option"):
        for m in reversed(list(re.finditer(
                rf"(?i:{word})\s*(?:(?i:is)|:)?\s*:?\s*\**\(?([A-J])\)?(?![A-Za-z])", text))):
            if m.group(1) in valid:
                return m.group(1)
    whole = as_letter(text.strip())
    if whole:
        return whole
    answer = extract_answer(text)
    return as_letter(answer) if answer else None


def gold_choice(gold: str, choices: list[str]) -> str | None:
    """The letter a gold answer names among `choices` (a letter or a choice's text), else None.

    >>> gold_choice("b", ["x", "y"]), gold_choice("y", ["x", "y"]), gold_choice("Z", ["x", "y"])
    ('B', 'B', None)
    """
    return _gold_letter(gold, list(choices))


def _gold_letter(gold: str, choices: list[str] | None) -> str | None:
    letter = extract_choice(gold, choices)
    if letter is None and choices:
        keys = [_key(str(x)) for x in choices]
        if _key(gold) in keys:
            letter = LETTERS[keys.index(_key(gold))]
    return letter


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
        gold_letter = _gold_letter(gold, choices)
        return GradeResult(letter is not None and letter == gold_letter, letter,
                           "choice" if letter is not None else "no-answer")
    answer = extract_answer(prediction)
    if answer is None:
        return GradeResult(False, None, "no-answer")
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        # no regex normalisation or symbolic parse of huge strings: plain comparison only
        same = " ".join(answer.split()) == " ".join(gold.split())
        return GradeResult(same, answer, "exact" if same else "mismatch")
    if exact_match_first and _key(answer) == _key(gold) and _key(gold):
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
