"""Evaluation metrics (DESIGN §7): Pass@1 with a 95% interval, generated tokens, AES.

All functions are small and pure. `summarize(predictions)` turns graded prediction records
(one per problem × sample, with `correct`, `tokens`, `num_turns`, `flags`) into the numbers
that go in `metrics.json`.

Pass@1 = mean over problems of the mean correctness of the k samples of each problem. Its 95%
interval is one rule, fixed by the evaluation's design (samples per problem), never by the
outcomes, and monotone in the number correct (one more right sample never lowers either bound):

- k = 1 sample per problem: the Wilson score interval of the proportion correct over the n
  problems (good coverage near 0 and 1, never a point: 0/30 gives [0, 0.114]).
- k > 1: the percentile bootstrap over problem means (problems are the independent units;
  samples of one problem are not; 2000 resamples of fixed seed), widened where needed to the
  Wilson interval of the pooled samples, the narrowest a set of that many samples supports (the
  bootstrap collapses to a point when every problem scores the same).

Both are monotone by construction: Wilson bounds rise with the proportion; every bootstrap
resample mean is a non-decreasing function of each problem mean (the resampled indices depend
only on n and the seed), so are their order statistics; the hull (min of lows, max of highs) of
two monotone intervals is monotone. `method="bootstrap"` uses the second rule for k = 1 too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Z95 = 1.959963984540054
FLAG_FORMAT = "format_violation"   # dialogue flags written by longshort.dialogue.collab
FLAG_LENGTH = "token_limit"
FLAG_NO_ANSWER = "no_boxed_answer"


@dataclass
class Estimate:
    """A mean with its 95% interval (`low`/`high` are None with fewer than 2 problems)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def problem_means(correct_by_problem: Mapping[str, Sequence[bool]] | Sequence[Sequence[bool]]) -> list[float]:
    """Mean correctness of each problem's samples.

    >>> problem_means([[True, False], [True, True, True, True]])
    [0.5, 1.0]
    """
    groups = correct_by_problem.values() if isinstance(correct_by_problem, Mapping) else correct_by_problem
    out = []
    for samples in groups:
        samples = list(samples)
        if not samples:
            raise ValueError("a problem with no samples")
        out.append(sum(bool(s) for s in samples) / len(samples))
    return out


def mean_interval(values: Sequence[float], *, method: Literal["normal", "bootstrap"] = "normal",
                  resamples: int = 2000, seed: int = 0, lower: float = 0.0,
                  upper: float = 1.0) -> Estimate:
    """Mean of arbitrary `values` with a 95% interval (normal approximation, mean ± 1.96·sd/√n,
    or percentile bootstrap), clipped to [lower, upper]. For Pass@1 use `pass_at_1`, whose
    interval is monotone in the number correct.

    >>> e = mean_interval([1.0, 0.0, 1.0, 1.0])
    >>> round(e.mean, 3), round(e.low, 3), round(e.high, 3)
    (0.75, 0.26, 1.0)
    >>> mean_interval([0.5]).low is None
    True
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, None, n, method)
    if method == "normal":
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        half = Z95 * math.sqrt(var / n)
        lo, hi = mean - half, mean + half
    elif method == "bootstrap":
        lo, hi = bootstrap_interval(values, resamples=resamples, seed=seed)
    else:
        raise ValueError(f"unknown interval method {method!r}")
    return Estimate(mean, max(lower, lo), min(upper, hi), n, method)


def bootstrap_interval(values: Sequence[float], *, resamples: int = 2000, seed: int = 0
                       ) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values`.

    The resampled indices depend only on ``len(values)`` and `seed`, and the bounds are order
    statistics (no interpolation), so each bound is a non-decreasing function of every value.

    >>> bootstrap_interval([0.0, 0.0, 0.0])
    (0.0, 0.0)
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    import numpy as np  # here: the rest of this module is pure Python

    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = np.sort(np.asarray(values, dtype=float)[idx].mean(axis=1))
    return float(means[int(0.025 * (resamples - 1))]), float(means[int(math.ceil(0.975 * (resamples - 1)))])


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed over `n` units.

    Both bounds rise with `p` (for fixed `n`); the interval always contains `p`.

    >>> tuple(round(x, 3) for x in wilson_interval(0.0, 10))
    (0.0, 0.278)
    >>> tuple(round(x, 3) for x in wilson_interval(0.0, 30)), tuple(round(x, 3) for x in wilson_interval(1 / 30, 30))
    ((0.0, 0.114), (0.006, 0.167))
    """
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if p <= 0 else max(0.0, center - half)
    high = 1.0 if p >= 1 else min(1.0, center + half)
    return low, high


PassIntervalMethod = Literal["auto", "bootstrap", "normal"]


def pass_at_1(correct_by_problem: Mapping[str, Sequence[bool]] | Sequence[Sequence[bool]], *,
              method: PassIntervalMethod = "auto", resamples: int = 2000, seed: int = 0) -> Estimate:
    """Pass@1 over k samples per problem, with its 95% interval (module docstring).

    method: "auto" (Wilson over problems when every problem has one sample, else the bootstrap
    over problem means with the pooled-sample Wilson floor), "bootstrap" (the latter for any
    k), "normal" (the former name of "auto", kept so older configs still run). `Estimate.method`
    names what was used: "wilson" or "bootstrap". Fewer than 2 problems: no interval.

    >>> e = pass_at_1({"a": [True, True], "b": [False, True], "c": [False, False]})
    >>> e.mean, e.n, e.method
    (0.5, 3, 'bootstrap')
    >>> e = pass_at_1([[False]] * 30)
    >>> e.method, e.low, round(e.high, 3)
    ('wilson', 0.0, 0.114)
    >>> round(pass_at_1([[True]] + [[False]] * 29).high, 3)
    0.167
    """
    if method not in ("auto", "bootstrap", "normal"):
        raise ValueError(f"unknown interval method {method!r}; expected auto or bootstrap")
    groups = list(correct_by_problem.values() if isinstance(correct_by_problem, Mapping) else correct_by_problem)
    means = problem_means(groups)
    n = len(means)
    mean = sum(means) / n
    if n < 2:
        return Estimate(mean, None, None, n, "wilson" if len(groups[0]) == 1 and method != "bootstrap"
                        else "bootstrap")
    if method != "bootstrap" and all(len(g) == 1 for g in groups):
        return Estimate(mean, *wilson_interval(mean, n), n, "wilson")
    b_lo, b_hi = bootstrap_interval(means, resamples=resamples, seed=seed)
    w_lo, w_hi = wilson_interval(mean, sum(len(g) for g in groups))
    return Estimate(mean, max(0.0, min(b_lo, w_lo)), min(1.0, max(b_hi, w_hi)), n, "bootstrap")


def relative_gain(value: float, base: float) -> float | None:
    """(value − base) / base; None when the base is 0.

    >>> relative_gain(0.75, 0.5)
    0.5
    """
    return None if base == 0 else (value - base) / base


def aes(accuracy: float, tokens: float, base_accuracy: float, base_tokens: float, *,
        eta: float = 1.0, s_plus: float = 3.0, s_minus: float = 5.0) -> float | None:
    """Accuracy-Efficiency Score against a baseline (DESIGN §7).

    ΔL = (L_base − L)/L_base, ΔA = (A − A_base)/A_base;
    AES = η·ΔL + ς₊·ΔA when ΔA ≥ 0, else η·ΔL + ς₋·ΔA (η=1, ς₊=3, ς₋=5: an accuracy loss
    costs more than an equal gain earns). None when the baseline's accuracy or tokens are 0.

    >>> aes(0.60, 200, 0.60, 1000)          # same accuracy, 80% fewer tokens
    0.8
    >>> round(aes(0.66, 500, 0.60, 1000), 6)  # +10% accuracy, half the tokens
    0.8
    >>> round(aes(0.54, 500, 0.60, 1000), 6)  # -10% accuracy, half the tokens
    0.0
    >>> aes(0.5, 100, 0.0, 1000) is None
    True
    """
    d_len = None if base_tokens == 0 else (base_tokens - tokens) / base_tokens
    d_acc = relative_gain(accuracy, base_accuracy)
    if d_len is None or d_acc is None:
        return None
    return eta * d_len + (s_plus if d_acc >= 0 else s_minus) * d_acc


def _problem_id(rec: Mapping[str, Any]) -> str:
    if rec.get("problem_id") is not None:
        return str(rec["problem_id"])
    return str(rec["id"]).split("#", 1)[0]


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize(predictions: Sequence[Mapping[str, Any]], *,
              method: PassIntervalMethod = "auto") -> dict[str, Any]:
    """The metrics of a set of graded predictions (one record per problem × sample).

    Each record needs `correct` (bool) and may carry `tokens` {long, short, total},
    `num_turns`, `flags`, `end_reason`, `grade` {method}. Tokens are generated tokens only.

    >>> recs = [{"id": "p#0", "problem_id": "p", "correct": True, "tokens": {"long": 30, "short": 10, "total": 40},
    ...          "num_turns": 2, "flags": []},
    ...         {"id": "p#1", "problem_id": "p", "correct": False, "tokens": {"long": 50, "short": 0, "total": 50},
    ...          "num_turns": 1, "flags": ["token_limit"]}]
    >>> m = summarize(recs)
    >>> m["pass_at_1"]["mean"], m["tokens"]["total"], m["finish_by_length_rate"], m["samples_per_problem"]
    (0.5, 45.0, 0.5, 2)
    """
    if not predictions:
        raise ValueError("no predictions to summarize")
    by_problem: dict[str, list[bool]] = {}
    for rec in predictions:
        if "correct" not in rec:
            raise ValueError(f"prediction {rec.get('id')!r} has not been graded (no 'correct')")
        by_problem.setdefault(_problem_id(rec), []).append(bool(rec["correct"]))
    p1 = pass_at_1(by_problem, method=method)
    ks = sorted({len(v) for v in by_problem.values()})

    def tok(rec: Mapping[str, Any], key: str) -> float:
        t = rec.get("tokens") or {}
        if key == "total" and "total" not in t:
            return float(t.get("long", 0) + t.get("short", 0))
        return float(t.get(key, 0))

    n = len(predictions)

    def rate(pred) -> float:
        return sum(1 for r in predictions if pred(r)) / n

    return {
        "problems": len(by_problem),
        "records": n,
        "samples_per_problem": ks[0] if len(ks) == 1 else ks,
        "pass_at_1": p1.to_dict(),
        "accuracy": p1.mean,
        "tokens": {k: _mean(tok(r, k) for r in predictions) for k in ("total", "long", "short")},
        "prompt_tokens": {k: _mean(float((r.get("prompt_tokens") or {}).get(k, 0)) for r in predictions)
                          for k in ("long", "short")},
        "turns": _mean(float(r.get("num_turns", 0)) for r in predictions),
        "finish_by_length_rate": rate(lambda r: FLAG_LENGTH in (r.get("flags") or [])
                                      or r.get("end_reason") == FLAG_LENGTH),
        "format_violation_rate": rate(lambda r: FLAG_FORMAT in (r.get("flags") or [])),
        "no_answer_rate": rate(lambda r: r.get("final_answer") is None and "final_answer" in r),
        "grading_timeouts": sum(1 for r in predictions if (r.get("grade") or {}).get("method") == "timeout"),
    }


def aes_against(metrics: Mapping[str, Any], baseline: Mapping[str, Any], *, eta: float = 1.0,
                s_plus: float = 3.0, s_minus: float = 5.0) -> dict[str, Any]:
    """AES of a run's `summarize` output against a baseline's, with ΔA and ΔL spelled out."""
    a, l_ = metrics["accuracy"], metrics["tokens"]["total"]
    ab, lb = baseline["accuracy"], baseline["tokens"]["total"]
    return {
        "aes": aes(a, l_, ab, lb, eta=eta, s_plus=s_plus, s_minus=s_minus),
        "delta_accuracy": relative_gain(a, ab),
        "delta_length": None if not lb else (lb - l_) / lb,
        "baseline_accuracy": ab, "baseline_tokens": lb,
        "eta": eta, "s_plus": s_plus, "s_minus": s_minus,
    }
