"""Decontamination: drop training traces whose problem appears in an evaluation set.

Long-CoT training sets are often built from competition problems that evaluation sets also
hold (LIMO contains AIME and MATH problems). A trace is contaminated when its problem matches
an evaluation problem after normalisation (lower case; LaTeX dollars, braces, backslash
commands' backslashes, punctuation and spacing removed; \\dfrac = \\frac, \\le = <=), either exactly or, with `ngram`,
when at least `overlap` of the longer problem's runs of `ngram` consecutive words also occur
in the other (8 words, 0.7: a re-typeset or lightly edited copy matches, while the boilerplate that
competition problems share, "where m and n are relatively prime positive integers. Find m+n",
is one or two runs out of dozens and does not). Dropped traces are counted per evaluation set, so a report can say what was removed.

>>> idx = EvalIndex({"aime24": [{"id": "a1", "problem": "Find $x$ if $2x = 10$."}]})
>>> idx.match("Find $y$ if $2y = 10$.")
>>> idx.match("Find $x$ if $2x = 10$ .")
('aime24', 'a1')
>>> kept, report = decontaminate([{"id": "t1", "problem": "Find x if 2x = 10."},
...                               {"id": "t2", "problem": "Find y if 3y = 9."}], idx)
>>> [r["id"] for r in kept], report["dropped"], report["by_benchmark"]
(['t2'], 1, {'aime24': 1})
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_EVAL_SETS = ("math500", "aime24", "aime25", "amc23", "gpqa_diamond", "gsm8k")

_ALIASES = [(re.compile(r"\\[dt]frac\b"), r"\\frac"), (re.compile(r"\\(?:le|leq|leqslant)\b|≤"), " <= "),
            (re.compile(r"\\(?:ge|geq|geqslant)\b|≥"), " >= "), (re.compile(r"\\(?:ne|neq)\b|≠"), " != "),
            (re.compile(r"\\(?:cdot|times)\b|×|·"), " * "), (re.compile(r"\\(?:left|right|displaystyle|,|;|!|quad)"), " ")]
_TOKEN = re.compile(r"[a-z]+|\d+|<=|>=|!=|[=+\-*/<>]")


def normalize_problem(text: str) -> str:
    """Problem text reduced to comparable tokens: lower-case words, numbers and operators, one
    space apart (LaTeX markup, punctuation and spacing differences gone; see the module docstring).

    >>> normalize_problem("What is $\\dfrac{1}{2}$ of 10?  ")
    'what is frac 1 2 of 10'
    >>> normalize_problem("|a+bi| \\le 5") == normalize_problem("| a + b i | <= 5")
    False
    >>> normalize_problem("|a+bi| \\le 5") == normalize_problem("| a + bi | <= 5")
    True
    """
    t = text.lower()
    for rx, sub in _ALIASES:
        t = rx.sub(sub, t)
    return " ".join(_TOKEN.findall(t))


def _grams(norm: str, n: int) -> set[tuple[str, ...]]:
    words = norm.split()
    return {tuple(words[k:k + n]) for k in range(len(words) - n + 1)}


def _squash(norm: str) -> str:
    return norm.replace(" ", "")


class EvalIndex:
    """Normalised evaluation problems, for exact and n-gram lookup."""

    def __init__(self, sets: Mapping[str, Iterable[dict[str, Any] | str]], ngram: int | None = 8,
                 overlap: float = 0.7):
        self.ngram = ngram
        self.overlap = overlap
        self.exact: dict[str, tuple[str, str]] = {}
        self.grams: dict[tuple[str, ...], set[tuple[str, str]]] = {}
        self.n_grams: dict[tuple[str, str], int] = {}
        self.sizes: dict[str, int] = {}
        for bench, records in sets.items():
            count = 0
            for r in records:
                count += 1
                if isinstance(r, str):  # a bare problem text
                    r = {"id": count, "problem": r}
                norm = normalize_problem(str(r.get("problem", "")))
                if not norm:
                    continue
                key = (bench, str(r.get("id", count)))
                self.exact.setdefault(_squash(norm), key)
                if ngram:
                    grams = _grams(norm, ngram)
                    self.n_grams[key] = len(grams)
                    for g in grams:
                        self.grams.setdefault(g, set()).add(key)
            self.sizes[bench] = count

    def match(self, problem: str) -> tuple[str, str] | None:
        """(benchmark, id) of the evaluation problem this one matches, or None."""
        norm = normalize_problem(problem)
        hit = self.exact.get(_squash(norm))
        if hit is not None or not self.ngram:
            return hit
        grams = _grams(norm, self.ngram)
        shared: Counter[tuple[str, str]] = Counter()
        for g in grams:
            for key in self.grams.get(g, ()):
                shared[key] += 1
        for key, c in shared.most_common():
            # relative to the longer of the two: a short eval problem is not "contained" in a
            # long training one because both say "find the number of ordered pairs"
            if c >= self.overlap * max(1, len(grams), self.n_grams[key]):
                return key
        return None


def load_eval_index(names: Sequence[str] = DEFAULT_EVAL_SETS, *, data_dir: str | os.PathLike | None = None,
                    ngram: int | None = 8, overlap: float = 0.7) -> EvalIndex:
    """An index over evaluation sets by name or JSONL path (`evaluation.benchmarks.load_benchmark`);
    a named set whose file is missing raises InputError (nothing is downloaded for this)."""
    from longshort.evaluation.benchmarks import load_benchmark

    return EvalIndex({name: load_benchmark(name, data_dir=data_dir) for name in names}, ngram=ngram,
                     overlap=overlap)


def decontaminate(records: Sequence[dict[str, Any]],
                  index: EvalIndex | Mapping[str, Iterable[dict[str, Any] | str]]
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records whose problem matches no evaluation problem, and a report. `index`: an EvalIndex,
    or `{set name: [problem records or problem texts]}` (indexed with the defaults). Report:
    `{checked, dropped, by_benchmark: {name: n}, dropped_ids: [...], matches: {id: "bench:id"}}`."""
    if not isinstance(index, EvalIndex):
        index = EvalIndex(index)
    kept: list[dict[str, Any]] = []
    by: Counter[str] = Counter()
    matches: dict[str, str] = {}
    for r in records:
        hit = index.match(str(r.get("problem", "")))
        if hit is None:
            kept.append(r)
            continue
        by[hit[0]] += 1
        matches[str(r.get("id"))] = f"{hit[0]}:{hit[1]}"
    return kept, {"checked": len(records), "dropped": len(records) - len(kept),
                  "by_benchmark": dict(sorted(by.items())), "dropped_ids": list(matches),
                  "matches": matches, "eval_sets": dict(index.sizes)}
