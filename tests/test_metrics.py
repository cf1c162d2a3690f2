"""Pass@1 and its interval, token means, rates, AES, report and plot."""

from __future__ import annotations

import doctest
import math
import random

import pytest

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
    assert e.n == 3 and e.method == "normal"
    assert e.low < e.mean < e.high
    # normal interval over problems: mean ± 1.96 sd/sqrt(n)
    ps = [0.25, 1.0, 0.0]
    mean = sum(ps) / 3
    sd = math.sqrt(sum((p - mean) ** 2 for p in ps) / 2)
    assert e.low == pytest.approx(max(0.0, mean - 1.959964 * sd / math.sqrt(3)), abs=1e-6)
    assert e.high == pytest.approx(min(1.0, mean + 1.959964 * sd / math.sqrt(3)), abs=1e-6)


def test_interval_coverage_is_about_95_percent():
    rng = random.Random(0)
    true_p, n, hits = 0.6, 200, 0
    for _ in range(300):
        e = M.pass_at_1([[rng.random() < true_p] for _ in range(n)])
        hits += e.low <= true_p <= e.high
    assert 0.90 <= hits / 300 <= 0.99


def test_bootstrap_interval_close_to_normal():
    rng = random.Random(1)
    data = [[rng.random() < 0.3 for _ in range(4)] for _ in range(150)]
    a, b = M.pass_at_1(data), M.pass_at_1(data, method="bootstrap")
    assert a.mean == b.mean and b.method == "bootstrap"
    assert abs(a.low - b.low) < 0.03 and abs(a.high - b.high) < 0.03


def test_degenerate_interval_uses_wilson():
    e = M.pass_at_1([[False], [False], [False]])
    assert e.mean == 0 and e.method == "wilson" and e.low == 0 and 0.4 < e.high < 0.7
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
