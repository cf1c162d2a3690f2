"""Pass@1 and its interval, token means, rates, AES, report and plot."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longshort.evaluation import metrics as M
from longshort.evaluation.report import (
    comparison_markdown,
    comparison_rows,
    plot_accuracy_vs_tokens,
    render_report,
)


def test_doctests():
    assert doctest.testmod(M).failed == 0


def test_pass_at_1_is_mean_of_problem_means():
    e = M.pass_at_1({"a": [True, False, False, False], "b": [True, True, True, True], "c": [False] * 4})
    assert e.mean == pytest.approx((0.25 + 1 + 0) / 3)
    assert e.n == 3 and e.method == "bootstrap"  # k > 1: bootstrap over problem means
    assert e.low < e.mean < e.high


def test_one_sample_per_problem_uses_wilson_over_problems():
    e = M.pass_at_1([[True]] * 12 + [[False]] * 18)
    lo, hi = M.wilson_interval(12 / 30, 30)
    assert e.method == "wilson" and (e.low, e.high) == (lo, hi)
    # the case of issue 9: 0/30 and 1/30 now come from the same rule, and 1/30 reaches higher
    zero, one = M.pass_at_1([[False]] * 30), M.pass_at_1([[True]] + [[False]] * 29)
    assert zero.low == 0 and zero.high == pytest.approx(0.1135, abs=1e-3)
    assert one.low > 0 and one.high > zero.high
    # "normal" is the former name of the default rule
    assert M.pass_at_1([[True]] + [[False]] * 29, method="normal") == one
    with pytest.raises(ValueError, match="unknown interval"):
        M.pass_at_1([[True], [False]], method="t")


def test_interval_monotone_in_number_correct_k1_exhaustive():
    for n in (2, 3, 5, 10, 30, 100):
        prev = None
        for c in range(n + 1):
            e = M.pass_at_1([[True]] * c + [[False]] * (n - c))
            assert e.low <= e.mean <= e.high
            if prev is not None:
                assert e.low >= prev.low and e.high >= prev.high, (n, c)
                assert (e.low, e.high) != (prev.low, prev.high)
            prev = e


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 25), k=st.integers(2, 5))
def test_interval_monotone_in_number_correct_k_gt_1(data, n, k):
    """Turning any one wrong sample right never lowers either bound (k > 1 samples)."""
    groups = [data.draw(st.lists(st.booleans(), min_size=k, max_size=k)) for _ in range(n)]
    wrong = [(i, j) for i, g in enumerate(groups) for j, ok in enumerate(g) if not ok]
    if not wrong:
        return
    i, j = data.draw(st.sampled_from(wrong))
    better = [list(g) for g in groups]
    better[i][j] = True
    a, b = M.pass_at_1(groups), M.pass_at_1(better)
    assert a.method == b.method == "bootstrap"
    assert b.mean > a.mean and b.low >= a.low and b.high >= a.high
    assert a.low <= a.mean <= a.high


def test_interval_coverage_is_about_95_percent():
    rng = random.Random(0)
    true_p, n, hits = 0.6, 200, 0
    for _ in range(300):
        e = M.pass_at_1([[rng.random() < true_p] for _ in range(n)])
        hits += e.low <= true_p <= e.high
    assert 0.90 <= hits / 300 <= 0.99


def test_clustered_k_gt_1_coverage_is_about_95_percent():
    """Problems of different difficulty, 4 samples each: the bootstrap over problem means covers
    the true Pass@1 (a pooled-sample interval would be too narrow here)."""
    rng = random.Random(3)
    n, k, hits, pooled_hits, reps = 80, 4, 0, 0, 200
    for _ in range(reps):
        ps = [rng.betavariate(0.5, 0.5) for _ in range(n)]  # the true Pass@1 is the mean of ps
        data = [[rng.random() < p for _ in range(k)] for p in ps]
        true = 0.5  # E[Beta(0.5, 0.5)]; problems are a sample from that population
        e = M.pass_at_1(data, resamples=1000, seed=rng.randrange(10**6))
        hits += e.low <= true <= e.high
        lo, hi = M.wilson_interval(e.mean, n * k)
        pooled_hits += lo <= true <= hi
    assert 0.90 <= hits / reps <= 0.99
    assert pooled_hits / reps < 0.85


def test_bootstrap_interval_close_to_normal():
    rng = random.Random(1)
    data = [[rng.random() < 0.3 for _ in range(4)] for _ in range(150)]
    a = M.mean_interval(M.problem_means(data))
    b = M.pass_at_1(data, method="bootstrap")
    assert a.mean == b.mean and b.method == "bootstrap" and a.method == "normal"
    assert abs(a.low - b.low) < 0.03 and abs(a.high - b.high) < 0.03


def test_degenerate_interval_is_never_a_point():
    e = M.pass_at_1([[False], [False], [False]])
    assert e.mean == 0 and e.method == "wilson" and e.low == 0 and 0.4 < e.high < 0.7
    e = M.pass_at_1([[False] * 4] * 30)  # k > 1, all wrong: the bootstrap alone would be [0, 0]
    assert e.method == "bootstrap" and e.low == 0 and e.high == pytest.approx(M.wilson_interval(0.0, 120)[1])
    e = M.pass_at_1([[True] * 4] * 30)
    assert e.high == 1 and e.low == pytest.approx(M.wilson_interval(1.0, 120)[0])
    assert M.pass_at_1([[True]]).low is None
    with pytest.raises(ValueError):
        M.pass_at_1([[]])


@pytest.mark.parametrize(("acc", "tok", "base_acc", "base_tok", "expected"), [
    (0.5, 1000, 0.5, 1000, 0.0),
    (0.5, 200, 0.5, 1000, 0.8),
    (0.6, 1000, 0.5, 1000, 3 * 0.2),
    (0.4, 1000, 0.5, 1000, 5 * -0.2),
    (0.898, 2113, 0.748, 24566, (24566 - 2113) / 24566 + 3 * (0.898 - 0.748) / 0.748),  # paper's MATH500
    (0.3, 3000, 0.5, 1000, -2.0 + 5 * -0.4),
])
def test_aes_formula(acc, tok, base_acc, base_tok, expected):
    assert M.aes(acc, tok, base_acc, base_tok) == pytest.approx(expected)


def test_aes_weights_and_undefined_cases():
    assert M.aes(0.4, 1000, 0.5, 1000, s_minus=1) == pytest.approx(-0.2)
    assert M.aes(0.5, 500, 0.5, 1000, eta=2) == pytest.approx(1.0)
    assert M.aes(0.5, 10, 0.0, 100) is None
    assert M.aes(0.5, 10, 0.5, 0) is None


def _rec(pid, k, correct, long, short, turns, flags=(), final="1"):
    return {"id": f"{pid}#{k}", "problem_id": pid, "sample": k, "correct": correct,
            "tokens": {"long": long, "short": short, "total": long + short},
            "prompt_tokens": {"long": 100, "short": 50}, "num_turns": turns, "flags": list(flags),
            "final_answer": final, "grade": {"method": "exact"}}


def test_summarize():
    recs = [_rec("a", 0, True, 100, 20, 2), _rec("a", 1, False, 300, 0, 1, ["token_limit"], None),
            _rec("b", 0, True, 50, 30, 4, ["format_violation"]), _rec("b", 1, True, 50, 10, 2)]
    m = M.summarize(recs)
    assert m["problems"] == 2 and m["records"] == 4 and m["samples_per_problem"] == 2
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["tokens"] == {"total": pytest.approx(140.0), "long": pytest.approx(125.0),
                           "short": pytest.approx(15.0)}
    assert m["turns"] == pytest.approx(2.25)
    assert m["finish_by_length_rate"] == 0.25 and m["format_violation_rate"] == 0.25
    assert m["no_answer_rate"] == 0.25 and m["grading_timeouts"] == 0
    with pytest.raises(ValueError, match="not been graded"):
        M.summarize([{"id": "x"}])
    with pytest.raises(ValueError):
        M.summarize([])


def test_aes_against_uses_total_tokens():
    run = {"accuracy": 0.5, "tokens": {"total": 200}}
    base = {"accuracy": 0.5, "tokens": {"total": 1000}}
    a = M.aes_against(run, base)
    assert a["aes"] == pytest.approx(0.8) and a["delta_length"] == pytest.approx(0.8) and a["delta_accuracy"] == 0


def _metrics(mode, acc_recs):
    m = M.summarize(acc_recs)
    m.update({"benchmark": "gsm8k", "mode": mode, "models": {"long": "x", "short": "y"}})
    return m


def test_report_and_plot(tmp_path):
    a = _metrics("collab", [_rec("a", 0, True, 100, 20, 2), _rec("b", 0, False, 80, 10, 2)])
    b = _metrics("long", [_rec("a", 0, True, 900, 0, 1), _rec("b", 0, True, 700, 0, 1)])
    a["aes"] = {**M.aes_against(a, b), "baseline_dir": "runs/long"}
    text = render_report(a)
    assert "Pass@1 | 50.0%" in text and "AES" in text and "runs/long" in text
    rows = comparison_rows([("collab", a), ("long", b)])
    assert [r["accuracy"] for r in rows] == [0.5, 1.0]
    md = comparison_markdown(rows)
    assert md.count("\n") == 4 and "| collab |" in md
    png = plot_accuracy_vs_tokens(rows, tmp_path / "plot.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
