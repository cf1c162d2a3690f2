"""Scoring thoughts (DESIGN §5): the three estimators of acc_i and the per-record driver.

`importance` holds the settings, the metrics (the joint formula applied to acc_0..acc_n) and
the cost plan; this module measures acc_i and writes the scored record:

- `rollout` (`rollout_accuracies`): R sampled continuations per prefix, each graded alone
  (`grade_rollout`);
- `forced` (`forced_accuracies`): the model's probability of the gold answer after each prefix,
  the thinking closed and an answer opening prefilled;
- `ablation` (`ablation_accuracies`): how much less likely the rest of the trace is without
  each thought, as shares of the trace's dependence.

`score_record` scores one trace with the configured estimator and metric; `iter_score` and
`score_traces` score many.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from longshort.errors import InputError, LongshortError
from longshort.thoughts.importance import (
    MATH_TOKENS,
    METRICS,
    ImportanceConfig,
    engine_context,
    plan_trace,
    request_seed,
    solo_messages,
    think_prefix,
    token_positions,
)

# --------------------------------------------------------------------------- scoring


def grade_rollout(continuation: str, finish_reason: str, answer: str, choices: Any,
                  grader: Callable[..., bool]) -> tuple[bool, bool]:
    """(right, finished) for one rollout. Only the continuation is graded: its last \\boxed{} is
    its final answer. A continuation with no box, or cut by the token limit, did not reach a final
    answer: it is unfinished and wrong. A box that is only in the kept prefix never counts, and
    there is no last-number fallback (a number in the text is not an answer).

    >>> from longshort.evaluation.grading import grade
    >>> grade_rollout("so 7 + 5 = 12. \\\\boxed{12}", "stop", "12", None, grade)
    (True, True)
    >>> grade_rollout("so 7 + 5 = 12", "stop", "12", None, grade), grade_rollout("\\\\boxed{12} and", "length", "12", None, grade)
    ((False, False), (False, False))
    """
    from longshort.dialogue.protocol import extract_boxed

    boxed = extract_boxed(continuation)
    if boxed is None or finish_reason == "length":
        return False, False
    return bool(grader("\\boxed{" + boxed + "}", answer, choices=choices)), True


def answer_targets(answer: str) -> list[str]:
    """The strings whose probability makes the forced acc_i: the gold answer and its closing brace,
    as written and after one space (``\\boxed{ 12}`` grades the same as ``\\boxed{12}``; the two
    strings are disjoint events, so their probabilities add)."""
    a = answer.strip()
    return [a + "}", " " + a + "}"]


def forced_accuracies(record: dict[str, Any], engine: Any, cfg: ImportanceConfig
                      ) -> tuple[list[float | None], dict[str, Any]]:
    """acc_0..acc_n of the `forced` estimator and what the record should say about them.

    Prefix i is the solo long-CoT prompt with ``"<think>\\n"`` + thoughts 1..i (joined by blank
    lines) as the start of the reply; each probe closes the thinking (``"\\n</think>\\n\\n"``),
    adds an answer opening that ends in ``\\boxed{`` and reads the model's probability of the gold
    answer + ``}`` (`answer_targets`). acc_i = mean over the openings of that probability. The
    engine encodes the trace once and branches the probes off its KV cache
    (`engines/probe.py`); a prefix that does not fit the context gets None.
    """
    from longshort.dialogue.protocol import THINK_CLOSE, THINK_OPEN
    from longshort.engines.base import GenerationRequest

    probe = _probe_method(engine, "branch_logprobs", "forced", "the model's probability of the gold answer")
    texts, segments = _segments(record)
    stems = ["\n" + THINK_CLOSE + "\n\n" + o for o in cfg.answer_openings]
    targets = answer_targets(str(record["answer"]))
    request = GenerationRequest(messages=solo_messages(record["problem"]), assistant_prefix=THINK_OPEN + "\n")
    logps = probe(request, segments, stems, targets, max_context=engine_context(engine, cfg))
    acc: list[float | None] = []
    for row in logps:
        if row is None:
            acc.append(None)
            continue
        per_opening = [min(1.0, sum(math.exp(lp) for lp in r)) for r in row]
        acc.append(sum(per_opening) / len(per_opening))
    info = {"answer_openings": list(cfg.answer_openings), "answer_targets": targets,
            "probes": sum(row is not None for row in logps) * len(stems) * len(targets),
            "num_rollouts": 0, "generated_tokens": 0}  # no sampling
    return acc, info


def ablation_accuracies(record: dict[str, Any], engine: Any, cfg: ImportanceConfig
                        ) -> tuple[list[float | None], dict[str, Any], dict[str, list[Any]]]:
    """acc_0..acc_n of the `ablation` estimator: the cumulative share of the trace's dependence.

    Thought i's *dependence* D_i (nats) is how much less likely the scoring model finds the text
    after it (the next `ablation_window` tokens: later thoughts and, with `ablation_tail`, the
    written answer) when thought i is removed: log P(rest | with i) - log P(rest | without i),
    summed over the rest's math tokens (`ablation_tokens`='math', `MATH_TOKENS`) or all of them.
    A computation whose result later steps use scores high; a re-check, a hesitation or an
    abandoned idea that nothing later refers to scores near 0 or below; so does a read-back of
    the problem or a plan, whose words (not numbers) are what later text repeats. Its share is
    e_i = D_i / sum_j max(D_j, 0) (scale-free, at most 1), and acc_i = e_1 + ... + e_i, so the
    metric's e_i = acc_i - acc_{i-1} is the share and the joint formula (× δ^(y/Y)) applies
    unchanged. A last thought with nothing after it (no `ablation_tail`) gets D = 0; a thought
    past the context gets None.
    """
    from longshort.dialogue.protocol import THINK_CLOSE, THINK_OPEN
    from longshort.engines.base import GenerationRequest

    probe = _probe_method(engine, "ablation_logprobs", "ablation", "the model's log-probabilities of the trace")
    texts, segments = _segments(record)
    tail = "\n" + THINK_CLOSE + "\n\n" + _after_thinking(record) if cfg.ablation_tail else ""
    request = GenerationRequest(messages=solo_messages(record["problem"]), assistant_prefix=THINK_OPEN + "\n")
    pattern = MATH_TOKENS if cfg.ablation_tokens == "math" else None
    rows = probe(request, segments, tail, window=cfg.ablation_window, max_context=engine_context(engine, cfg),
                 count_pattern=pattern)
    n = len(texts)
    dep: list[float | None] = [None] * (n + 1)
    rest: list[int | None] = [None] * (n + 1)
    for i, row in enumerate(rows, start=1):
        if row is not None:  # None: the thought is past the context
            dep[i], rest[i] = row[0] - row[1], row[2]
    mass = sum(max(d, 0.0) for d in dep if d is not None)
    acc: list[float | None] = [0.0] + [None] * n
    for i in range(1, n + 1):
        if dep[i] is None or acc[i - 1] is None:
            break
        acc[i] = acc[i - 1] + (dep[i] / mass if mass > 0 else 0.0)
    info = {"ablation_window": cfg.ablation_window, "ablation_tail": cfg.ablation_tail,
            "ablation_tokens": cfg.ablation_tokens,
            "dependence_mass": round(mass, 4), "num_rollouts": 0, "generated_tokens": 0}
    return acc, info, {"dependence": dep, "rest_tokens": rest}


def _probe_method(engine: Any, method: str, estimator: str, reads: str) -> Callable[..., Any]:
    """The engine's probability method an estimator needs, or one clear error naming both."""
    probe = getattr(engine, method, None)
    if not callable(probe):
        raise LongshortError(
            f"importance estimator {estimator!r} reads {reads}, which the "
            f"{getattr(engine, 'name', type(engine).__name__)!r} engine cannot give; use the transformers "
            "engine (--engine transformers) or --estimator rollout")
    return probe


def _segments(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The thoughts' texts and the segments they are in the response (blank lines between)."""
    texts = [t["text"] for t in record["thoughts"]]
    return texts, [("\n\n" if k else "") + t for k, t in enumerate(texts)]


def _after_thinking(record: dict[str, Any]) -> str:
    """The response after its thinking block ('' when there is none)."""
    from longshort.dialogue.protocol import THINK_CLOSE

    after = record.get("after")
    if isinstance(after, str):
        return after
    response = str(record.get("response", ""))
    return response.split(THINK_CLOSE, 1)[1].strip() if THINK_CLOSE in response else ""


def rollout_accuracies(record: dict[str, Any], engine: Any, cfg: ImportanceConfig, grader: Callable[..., bool],
                        progress: bool) -> tuple[list[float | None], dict[str, Any], dict[str, list[Any]]]:
    from longshort.engines.base import GenerationRequest, SamplingParams

    p = plan_trace(engine, record, cfg)
    texts, last, n = p["texts"], p["last"], len(p["texts"])
    rid = str(record.get("id"))
    choices = record.get("choices") or None
    requests = [GenerationRequest(
        messages=p["messages"], assistant_prefix=think_prefix(texts, i),
        params=SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.rollouts,
                              max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop),
                              seed=request_seed(cfg.seed, rid, i)),
        meta={"id": rid, "prefix": i}) for i in range(last + 1)]
    results = engine.generate(requests, progress=progress) if requests else []
    acc: list[float | None] = [None] * (n + 1)
    right: list[int | None] = [None] * (n + 1)
    unfinished: list[int | None] = [None] * (n + 1)
    gen_tokens = cut = 0
    for i, res in enumerate(results):
        ok = unf = 0
        for c in res.completions:
            gen_tokens += c.num_tokens
            cut += c.finish_reason == "length"
            r, finished = grade_rollout(c.text, c.finish_reason, record["answer"], choices, grader)
            ok += r
            unf += not finished
        right[i], unfinished[i] = ok, unf
        acc[i] = ok / len(res.completions) if res.completions else None
    info = {"rollouts": cfg.rollouts, "alpha": cfg.alpha, "generated_tokens": gen_tokens,
            "num_rollouts": sum(len(r.completions) for r in results), "rollouts_cut_by_length": cut,
            "unfinished": sum(u or 0 for u in unfinished), "max_new_tokens": cfg.max_new_tokens,
            "seed": cfg.seed}
    return acc, info, {"right": right, "unfinished": unfinished}


def score_record(record: dict[str, Any], engine: Any, config: ImportanceConfig | None = None, *,
                 progress: bool = False, grader: Callable[..., bool] | None = None) -> dict[str, Any]:
    """Score one chunked trace; returns a new record with per-thought importance fields and an
    `importance` summary saying which estimator and which model scored it."""
    cfg = config or ImportanceConfig()
    if cfg.metric not in METRICS:
        raise InputError(f"unknown importance metric {cfg.metric!r}; known: {sorted(METRICS)}")
    n = len(record["thoughts"])
    y, Y = token_positions(engine, record)
    per_prefix: dict[str, list[Any]] = {}
    if cfg.estimator == "forced":
        acc, info = forced_accuracies(record, engine, cfg)
    elif cfg.estimator == "ablation":
        acc, info, per_prefix = ablation_accuracies(record, engine, cfg)
    else:
        if grader is None:
            from longshort.evaluation.grading import grade as grader
        acc, info, per_prefix = rollout_accuracies(record, engine, cfg, grader, progress)
    scored = max([i for i, a in enumerate(acc) if a is not None], default=-1)
    fields = METRICS[cfg.metric](acc, y, Y, cfg)
    thoughts = []
    for k, (t, f) in enumerate(zip(record["thoughts"], fields, strict=True), start=1):
        extra = {name: vals[k] for name, vals in per_prefix.items()}
        thoughts.append({**t, "acc": acc[k], "acc_prev": acc[k - 1], **extra, "y": y[k], **f})
    flags = list(record.get("flags", []))
    if scored < n:
        flags.append("context_truncated")
    out = {k: v for k, v in record.items() if k != "thoughts"}
    out.update(thoughts=thoughts, flags=list(dict.fromkeys(flags)), importance={
        "estimator": cfg.estimator, "model": getattr(engine, "model_name", ""), "metric": cfg.metric,
        "delta": cfg.delta, "acc0": acc[0], "acc_full": acc[n], "Y": Y, "scored_thoughts": max(0, scored),
        **({"unfinished0": per_prefix["unfinished"][0]} if "unfinished" in per_prefix else {}), **info})
    return out


def iter_score(records: Sequence[dict[str, Any]], engine: Any, config: ImportanceConfig | None = None,
               *, progress: bool = False) -> Iterator[dict[str, Any]]:
    """Score traces one after another (one generate call each), yielding each when done."""
    cfg = config or ImportanceConfig()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="score", unit="trace")
    try:
        for r in records:
            yield score_record(r, engine, cfg)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def score_traces(records: Sequence[dict[str, Any]], engine: Any, config: ImportanceConfig | None = None,
                 *, progress: bool = False) -> list[dict[str, Any]]:
    """All traces scored (see `score_record`)."""
    return list(iter_score(records, engine, config, progress=progress))

