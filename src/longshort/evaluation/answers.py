"""Reading an answer out of a response: the last `\\boxed{}` and its fallbacks
(`extract_answer`), the normalisation both sides get before comparing (`normalize_answer`,
`match_key`), and multiple-choice letters (`extract_choice`, `gold_choice`). Pure string work,
no time limit needed; `evaluation.grading` judges with these under a deadline.

>>> extract_answer(r"so \\boxed{\\frac{1}{2}} and done")
'\\\\frac{1}{2}'
>>> normalize_answer(r"5 \\text{ cm}")
'5'
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"


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


def match_key(answer: str) -> str:
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
            keys = [match_key(str(x)) for x in choices]
            if match_key(c) in keys:
                return valid[keys.index(match_key(c))]
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
    return gold_letter(gold, list(choices))


def gold_letter(gold: str, choices: list[str] | None) -> str | None:
    letter = extract_choice(gold, choices)
    if letter is None and choices:
        keys = [match_key(str(x)) for x in choices]
        if match_key(gold) in keys:
            letter = LETTERS[keys.index(match_key(gold))]
    return letter
