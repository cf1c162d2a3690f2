"""Split a long chain of thought into steps (DESIGN §5).

A step is a paragraph: the thinking text is split on blank lines and empty pieces are dropped.
The `<think>` wrapper (or Sky-T1's `<|begin_of_thought|>` … `<|end_of_thought|>`) is stripped and
remembered, together with any text after it (the model's post-thinking answer), so a trace can
be rebuilt and the final answer reused by cold-start synthesis.

Traces with no blank lines (one huge paragraph) fall back to line splitting, then to sentence
splitting, and say so in `flags`, so downstream code never sees a single 10k-character step.

>>> s = split_steps("<think>\\nFirst.\\n\\n\\nSecond.\\n</think>\\n\\nAnswer: \\\\boxed{2}")
>>> s.steps, s.after
(['First.', 'Second.'], 'Answer: \\\\boxed{2}')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# (open tag, close tag) pairs recognised as thinking wrappers, most common first.
THINK_WRAPPERS: list[tuple[str, str]] = [
    ("<think>", "</think>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
]
# Sky-T1 wraps its post-thinking answer too; the markers are dropped from `final_text`.
SOLUTION_MARKERS = ("<|begin_of_solution|>", "<|end_of_solution|>")

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
# A sentence ends at . ! ? followed by whitespace and an upper-case letter, digit or backslash;
# decimals like 3.5 and abbreviations followed by lower case are not split.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\\(\[*])")

# A single paragraph longer than this many characters triggers the line/sentence fallback.
MAX_SINGLE_STEP_CHARS = 400


@dataclass
class Steps:
    """A trace split into steps, with what was stripped around them.

    steps: the paragraphs of the thinking text, 1-based in thought ranges.
    before: text before the thinking wrapper (usually empty).
    after: text after the closing wrapper: the model's post-thinking answer (may be empty).
    open_tag / close_tag: the wrapper found (None when the trace had none).
    split: how the thinking was split: "blank_line" (normal), "line" or "sentence" (fallbacks).
    flags: anomalies worth reporting ("no_blank_lines", "unclosed_think", ...).
    """

    steps: list[str]
    before: str = ""
    after: str = ""
    open_tag: str | None = None
    close_tag: str | None = None
    split: str = "blank_line"
    flags: list[str] = field(default_factory=list)

    @property
    def thinking(self) -> str:
        """The thinking text rebuilt from the steps (paragraphs joined by a blank line)."""
        return "\n\n".join(self.steps)

    @property
    def final_text(self) -> str:
        """The post-thinking answer without Sky-T1's solution markers."""
        text = self.after
        for marker in SOLUTION_MARKERS:
            text = text.replace(marker, "")
        return text.strip()

    def to_dict(self) -> dict:
        return {"steps": self.steps, "before": self.before, "after": self.after,
                "open_tag": self.open_tag, "close_tag": self.close_tag, "split": self.split,
                "flags": list(self.flags)}


def strip_think(response: str) -> tuple[str, str, str, str | None, str | None, list[str]]:
    """Return (before, thinking, after, open_tag, close_tag, flags) for a response.

    Without any wrapper the whole response is the thinking. A closing tag without an opening
    one (R1 prompts end in "<think>\\n") counts as wrapped from the start. An opening tag
    without a closing one (a generation cut off by its length limit) keeps everything after
    the tag as thinking and adds the flag "unclosed_think".
    """
    flags: list[str] = []
    for open_tag, close_tag in THINK_WRAPPERS:
        o = response.find(open_tag)
        c = response.find(close_tag)
        if o < 0 and c < 0:
            continue
        if o >= 0 and (c < 0 or o < c):
            before, rest = response[:o], response[o + len(open_tag):]
            c2 = rest.find(close_tag)
            if c2 < 0:
                flags.append("unclosed_think")
                return before, rest, "", open_tag, None, flags
            return before, rest[:c2], rest[c2 + len(close_tag):], open_tag, close_tag, flags
        # closing tag only (or closing before opening): wrapped from the start
        return "", response[:c].replace(open_tag, ""), response[c + len(close_tag):], None, close_tag, flags
    return "", response, "", None, None, flags


def split_paragraphs(text: str) -> list[str]:
    """Split on blank lines; pieces are stripped and empty ones dropped."""
    return [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences (a simple rule; used only as a fallback)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def split_steps(response: str, *, max_single_step_chars: int = MAX_SINGLE_STEP_CHARS) -> Steps:
    """Split a long-CoT response into steps (see the module docstring).

    Raises ValueError when the thinking text is empty (callers turn it into an InputError
    naming the file and line).
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    before, thinking, after, open_tag, close_tag, flags = strip_think(response)
    steps = split_paragraphs(thinking)
    split = "blank_line"
    if not steps:
        raise ValueError("the thinking text is empty")
    if len(steps) == 1 and len(steps[0]) > max_single_step_chars:
        flags.append("no_blank_lines")
        lines = [ln.strip() for ln in steps[0].splitlines() if ln.strip()]
        if len(lines) > 1:
            steps, split = lines, "line"
        else:
            sentences = split_sentences(steps[0])
            if len(sentences) > 1:
                steps, split = sentences, "sentence"
            else:
                flags.append("unsplittable")
    return Steps(steps=steps, before=before.strip(), after=after.strip(), open_tag=open_tag,
                 close_tag=close_tag, split=split, flags=flags)


# --------------------------------------------------------------------------- thought records
# (here, below chunking and segment, so both build thoughts the same way without importing each other)

CATEGORIES = ("understanding", "planning", "computation", "verification", "alternative",
              "conclusion", "other")

# free-text type -> category, first match wins (checked on the lower-cased type)
_CATEGORY_KEYWORDS: list[tuple[str, tuple[str, ...]]] = [
    ("verification", ("verif", "check", "confirm", "validat", "sanity", "review", "reflect",
                      "double", "self_checking", "monitor")),
    ("alternative", ("alternative", "another approach", "different approach", "explor",
                     "backtrack", "abandon", "other method", "second approach", "retry")),
    ("conclusion", ("conclu", "final", "answer", "summar", "result_consolidation", "wrap")),
    ("understanding", ("understand", "restat", "read", "setup", "set up",
                       "comprehen", "interpret", "analy", "given", "fact_retrieval", "recall")),
    ("planning", ("plan", "strateg", "approach", "decompos", "outline", "break down", "method")),
    ("computation", ("comput", "calculat", "solv", "derivat", "deriv", "simplif", "algebra",
                     "implement", "substitut", "evaluat", "count", "case", "execut", "step",
                     "equation", "arithmetic", "reason")),
    ("other", ("hesitat", "uncertain", "pause", "hmm", "uncertainty_management")),
]


def normalize_category(type_text: str | None) -> str:
    """Map a free-text thought type to one of CATEGORIES (unknown -> "other").

    >>> normalize_category("Problem Understanding"), normalize_category("double-check")
    ('understanding', 'verification')
    """
    t = (type_text or "").strip().lower()
    if t in CATEGORIES:
        return t
    for cat, keys in _CATEGORY_KEYWORDS:
        if any(k in t for k in keys):
            return cat
    return "other"


def make_thought(steps: Sequence[str], start: int, end: int, type_text: str,
                 category: str | None = None) -> dict[str, Any]:
    """A thought record over steps[start-1:end] (1-based inclusive)."""
    return {"start": start, "end": end, "type": type_text,
            "category": category or normalize_category(type_text),
            "text": "\n\n".join(steps[start - 1:end])}
