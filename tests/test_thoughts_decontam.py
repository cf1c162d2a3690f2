"""Decontamination: normalised matching of training problems against evaluation sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from longshort.thoughts.decontam import EvalIndex, decontaminate, load_eval_index, normalize_problem

SHARED = Path(__file__).resolve().parents[2] / "shared"

EVAL = {"aime": [{"id": "A1", "problem": "Let $x$ and $y$ be real numbers with $x+y=10$ and $xy=21$. "
                                      "The value of $x^2+y^2$ can be written as $\\frac{m}{n}$, where $m$ and $n$ "
                                      "are relatively prime positive integers. Find $m+n$."}],
        "math": [{"id": "M1", "problem": "Find the number of ordered pairs $(a,b)$ of integers such that "
                                         "$|a + bi| \\le 5.$"}]}


def test_retypeset_copy_is_dropped_and_counted():
    idx = EvalIndex(EVAL)
    recs = [
        # the same problem typed differently (no dollars, other spacing, \dfrac)
        {"id": "t1", "problem": "Let x and y be real numbers with x + y = 10 and xy = 21. The value of "
                                "x^2 + y^2 can be written as \\dfrac{m}{n} where m and n are relatively "
                                "prime positive integers. Find m + n."},
        # shares only the competition boilerplate: kept
        {"id": "t2", "problem": "The probability that two dice show the same face can be written as "
                                "$\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$."},
        {"id": "t3", "problem": "find the number of ordered pairs (a, b) of integers such that |a+bi| <= 5"},
        {"id": "t4", "problem": "Find the number of ordered pairs $(a,b)$ of integers such that $a^2 + b^2 = 25$."},
    ]
    kept, rep = decontaminate(recs, idx)
    assert [r["id"] for r in kept] == ["t2", "t4"]
    assert rep["dropped"] == 2 and rep["checked"] == 4
    assert rep["by_benchmark"] == {"aime": 1, "math": 1} and rep["matches"]["t3"] == "math:M1"
    # a re-typeset copy is equal after normalisation; a lightly edited one needs the n-grams
    exact = EvalIndex(EVAL, ngram=None)
    assert exact.match(recs[0]["problem"]) == ("aime", "A1")
    edited = recs[0]["problem"].replace("Let x and y be", "Suppose x and y are")
    assert exact.match(edited) is None and idx.match(edited) == ("aime", "A1")
    # the pipeline passes {set: [problem texts]}
    texts = {k: [r["problem"] for r in v] for k, v in EVAL.items()}
    assert decontaminate(recs, texts)[1]["by_benchmark"] == {"aime": 1, "math": 1}
    assert normalize_problem("A $\\frac{1}{2}$-inch") == normalize_problem("a \\frac 1 2 - inch")


@pytest.mark.skipif(not (SHARED / "benchmarks" / "aime24.jsonl").exists()
                    or not (SHARED / "longcot" / "aime24_gemini2_flash_thinking.jsonl").exists(),
                    reason="../shared data not present")
def test_real_aime_traces_are_caught_and_limo_is_clean():
    from longshort.thoughts.ingest import load_traces

    idx = load_eval_index(("math500", "aime24", "aime25", "amc23"), data_dir=SHARED / "benchmarks")
    kept, rep = decontaminate(load_traces(SHARED / "longcot" / "aime24_gemini2_flash_thinking.jsonl"), idx)
    assert kept == [] and rep["by_benchmark"] == {"aime24": 30}
    limo = load_traces(SHARED / "longcot" / "limo_r1_distill_qwen32b.jsonl")
    kept, rep = decontaminate(limo, idx)
    # measured: no LIMO question of this file is in these four sets (the top 8-gram overlap is
    # boilerplate, 0.4 of the shorter problem); a loose single-13-gram rule would drop 44
    assert rep["dropped"] == 0 and len(kept) == len(limo)
