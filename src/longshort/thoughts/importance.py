"""Monte Carlo importance of thoughts (DESIGN §5).

For a trace with thoughts 1..n and i = 0..n, the model is given the question (solo long-CoT
prompt) and, as the beginning of its reply, `"<think>\\n"` + thoughts 1..i. It samples R
continuations (one request with `n=R`, so the engine encodes the shared prefix once) that
must reach a final answer; each is graded (`evaluation.grading.grade`) on the prefix plus the
continuation (the model's whole reasoning). Then, per thought i:

- `acc_i = right_i / R` (accuracy after thought i; `acc_0` = question alone),
- effectiveness `e_i = acc_i - acc_{i-1}`,
- efficiency decay `d_i = delta ** (y_i / Y)` (y_i = tokens up to the end of thought i,
  Y = tokens of the whole trace; delta = 0.25),
- joint score `s_i = e_i * d_i` in [-1, 1] and its Hoeffding bound
  `2 * d_i * sqrt(ln(4 / alpha) / (2 R))` (|ŝ_i - s_i| ≤ bound with probability ≥ 1 - alpha).

The metric is pluggable: `METRICS` maps a name to a function computing the per-thought fields
from the accuracies and token positions (`register_metric`).

All rollouts of a trace go out in one `generate` call (n+1 requests × R samples). A trace
whose prefix would not fit the model's context (prompt + prefix + max_new_tokens) is scored up
to the last thought that fits; later thoughts get `score: None` and the record the flag
`context_truncated` (never a crash).

>>> [round(x["score"], 3) for x in gain_decay([0.0, 0.6, 0.6, 1.0], [0, 10, 20, 40], 40,
...                                            ImportanceConfig())]
[0.424, 0.0, 0.1]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, Field

from longshort.errors import InputError

# --------------------------------------------------------------------------- config


class ImportanceConfig(BaseModel):
    """Settings of Monte Carlo importance scoring."""

    rollouts: int = Field(5, ge=1, description="Continuations R per prefix; 5 as in the paper "
                          "(Hoeffding bound ≈ 0.68·d_i at alpha=0.05).")
    delta: float = Field(0.25, gt=0.0, le=1.0, description="Length decay base δ: a thought at the "
                         "end of the trace is worth δ of one at the start; 0.25 as in the paper.")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Confidence level of the stored bound "
                         "(holds with probability ≥ 1 - alpha); 0.05 is the usual 95%.")
    metric: str = Field("gain_decay", description="Scoring function from METRICS; 'gain_decay' is "
                        "DESIGN §5 (e_i · d_i), 'gain' drops the length decay.")
    max_new_tokens: int = Field(512, ge=1, description="Tokens per continuation; enough for a small "
                                "model to finish short problems, raise it for real long-CoT models.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of rollouts: >0 so "
                               "the R samples differ; 0.7 is the usual setting for R1-style models.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus mass of rollouts (R1 default).")
    seed: int = Field(0, description="Base seed; each (trace, prefix) request gets a seed derived "
                      "from it, so reruns and the reuse/no-reuse benchmark sample the same.")
    grade_prefix: bool = Field(True, description="Grade prefix + continuation (the whole reasoning: "
                               "an answer already written in the kept thoughts counts) rather than "
                               "the continuation alone.")
    max_context: int | None = Field(None, ge=16, description="Model context in tokens; None = read "
                                    "from the engine's model config (max_position_embeddings).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings for rollouts; "
                            "none by default, the continuation runs to EOS or max_new_tokens.")


# --------------------------------------------------------------------------- metrics

MetricFn = Callable[[Sequence[float | None], Sequence[int], int, ImportanceConfig], list[dict[str, Any]]]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator adding a scoring function to METRICS under `name`.

    A metric gets `acc` (n+1 accuracies, None where not measured), `y` (n+1 token positions,
    y[0] = 0), `Y` (tokens of the whole trace) and the config; it returns n dicts (thoughts
    1..n) with at least `score` (None when not measurable) and `bound`.
    """
    def deco(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn
    return deco


def hoeffding_bound(d: float, rollouts: int, alpha: float) -> float:
    """Half-width of the (1-alpha) interval of e_i·d_i from two independent accuracy estimates
    (each within sqrt(ln(4/alpha)/(2R)) with probability ≥ 1-alpha/2)."""
    return 2.0 * d * math.sqrt(math.log(4.0 / alpha) / (2.0 * rollouts))


@register_metric("gain_decay")
def gain_decay(acc: Sequence[float | None], y: Sequence[int], Y: int, cfg: ImportanceConfig
               ) -> list[dict[str, Any]]:
    """DESIGN §5: e_i = acc_i - acc_{i-1}, d_i = delta ** (y_i / Y), s_i = e_i · d_i."""
    out = []
    for i in range(1, len(acc)):
        d = cfg.delta ** (min(y[i], Y) / Y) if Y > 0 else 1.0
        if acc[i] is None or acc[i - 1] is None:
            out.append({"e": None, "d": d, "score": None, "bound": None})
            continue
        e = acc[i] - acc[i - 1]
        out.append({"e": e, "d": d, "score": e * d, "bound": hoeffding_bound(d, cfg.rollouts, cfg.alpha)})
    return out


@register_metric("gain")
def gain(acc: Sequence[float | None], y: Sequence[int], Y: int, cfg: ImportanceConfig
         ) -> list[dict[str, Any]]:
    """Accuracy gain alone (no length decay): s_i = e_i."""
    out = []
    for i in range(1, len(acc)):
        if acc[i] is None or acc[i - 1] is None:
            out.append({"e": None, "d": 1.0, "score": None, "bound": None})
            continue
        e = acc[i] - acc[i - 1]
        out.append({"e": e, "d": 1.0, "score": e, "bound": hoeffding_bound(1.0, cfg.rollouts, cfg.alpha)})
    return out


# --------------------------------------------------------------------------- checks

_MAX_ANSWER_CHARS = 300


def check_answer(answer: Any) -> str | None:
    """Why a gold answer cannot be graded, or None when it can (a short, balanced expression)."""
    if not isinstance(answer, str) or not answer.strip():
        return "missing or empty"
    if len(answer) > _MAX_ANSWER_CHARS:
        return f"{len(answer)} characters: looks like a solution, not a final answer"
    depth = 0
    for ch in answer:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        return f"unbalanced braces in {answer!r}"
    return None


def validate_scoring_record(r: dict[str, Any], path: str | None = None, line: int | None = None) -> None:
    """Raise InputError (naming file, line and field) when a chunk record cannot be scored."""
    from longshort.thoughts.chunking import check_thoughts

    why = check_answer(r.get("answer"))
    if why:
        raise InputError(f"record {r.get('id')!r}: answer cannot be parsed ({why})", path=path,
                         line=line, field="answer")
    for fld in ("problem", "response"):
        if not isinstance(r.get(fld), str) or not r[fld].strip():
            raise InputError(f"record {r.get('id')!r}: missing or empty", path=path, line=line, field=fld)
    th, steps = r.get("thoughts"), r.get("steps")
    if not isinstance(th, list) or not th or not isinstance(steps, list):
        raise InputError(f"record {r.get('id')!r}: no thoughts/steps (run `longshort chunk` first)",
                         path=path, line=line, field="thoughts")
    if not all(isinstance(t, dict) and isinstance(t.get("text"), str) for t in th):
        raise InputError(f"record {r.get('id')!r}: every thought needs a 'text'", path=path, line=line,
                         field="thoughts")
    problems = check_thoughts(th, len(steps))
    if problems:
        raise InputError(f"record {r.get('id')!r}: {problems[0]}", path=path, line=line, field="thoughts")


def validate_scoring_input(records: Sequence[dict[str, Any]], path: str | None = None) -> None:
    """`validate_scoring_record` on every record (line = position in `records`, 1-based)."""
    for k, r in enumerate(records, start=1):
        validate_scoring_record(r, path, k)


# --------------------------------------------------------------------------- prefixes


def think_prefix(thought_texts: Sequence[str], i: int) -> str:
    """The assistant prefix holding thoughts 1..i: "<think>\\n" + paragraphs + a paragraph break."""
    if i == 0:
        return "<think>\n"
    return "<think>\n" + "\n\n".join(thought_texts[:i]) + "\n\n"


def request_seed(base: int, rid: str, i: int) -> int:
    """A stable seed per (config seed, trace id, prefix index)."""
    h = hashlib.sha256(f"{base}:{rid}:{i}".encode()).digest()
    return int.from_bytes(h[:6], "big")


def engine_context(engine: Any, cfg: ImportanceConfig) -> int | None:
    if cfg.max_context:
        return cfg.max_context
    for attr in ("max_context", "max_model_len"):
        v = getattr(engine, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    model = getattr(engine, "model", None)
    conf = getattr(model, "config", None)
    v = getattr(conf, "max_position_embeddings", None)
    return v if isinstance(v, int) and v > 0 else None


def _count(engine: Any, text: str) -> int:
    return int(engine.count_tokens(text)) if text else 0


def token_positions(engine: Any, record: dict[str, Any]) -> tuple[list[int], int]:
    """y (n+1 cumulative token counts at thought ends, y[0]=0) and Y (tokens of the response)."""
    y = [0]
    for t in record["thoughts"]:
        y.append(y[-1] + _count(engine, t["text"]))
    Y = max(_count(engine, record["response"]), y[-1], 1)
    return y, Y


def _messages(problem: str) -> list[dict[str, str]]:
    from longshort.dialogue.protocol import render_input

    messages, _ = render_input("long", problem, solo=True)
    return messages


def _base_prompt_tokens(engine: Any, messages: list[dict[str, str]]) -> int:
    from longshort.engines.base import GenerationRequest

    render = getattr(engine, "render", None)
    if callable(render):
        return _count(engine, render(GenerationRequest(messages=messages)))
    return sum(_count(engine, m["content"]) + 4 for m in messages) + 8


def plan_trace(engine: Any, record: dict[str, Any], cfg: ImportanceConfig) -> dict[str, Any]:
    """What scoring one trace needs: prefixes that fit, rollouts, estimated generated tokens."""
    texts = [t["text"] for t in record["thoughts"]]
    n = len(texts)
    messages = _messages(record["problem"])
    base = _base_prompt_tokens(engine, messages)
    y, Y = token_positions(engine, record)
    ctx = engine_context(engine, cfg)
    last = n
    if ctx is not None:
        # +2 tokens per thought for the "\n\n" joins and "<think>\n"; a small margin for merges
        while last >= 0 and base + y[last] + 2 * last + 4 + cfg.max_new_tokens > ctx:
            last -= 1
    rest = [max(16, Y - y[i]) for i in range(n + 1)]
    est = sum(min(cfg.max_new_tokens, rest[i]) for i in range(last + 1)) * cfg.rollouts
    return {"messages": messages, "texts": texts, "y": y, "Y": Y, "last": last,
            "rollouts": (last + 1) * cfg.rollouts, "est_tokens": est, "prompt_tokens": base}


def plan(records: Sequence[dict[str, Any]], engine: Any, config: ImportanceConfig | None = None
         ) -> dict[str, Any]:
    """Totals for a dry run: traces, thoughts, requests, rollouts, estimated generated tokens."""
    cfg = config or ImportanceConfig()
    totals = {"traces": len(records), "thoughts": 0, "requests": 0, "rollouts": 0,
              "est_generated_tokens": 0, "truncated_traces": 0}
    for r in records:
        p = plan_trace(engine, r, cfg)
        totals["thoughts"] += len(p["texts"])
        totals["requests"] += p["last"] + 1
        totals["rollouts"] += p["rollouts"]
        totals["est_generated_tokens"] += p["est_tokens"]
        totals["truncated_traces"] += p["last"] < len(p["texts"])
    return totals


# --------------------------------------------------------------------------- scoring


def grade_rollout(prefix: str, continuation: str, answer: str, choices: Any, cfg: ImportanceConfig,
                  grader: Callable[..., bool]) -> bool:
    """Is one rollout right? Its final answer is the last \\boxed{} of the whole reasoning
    (prefix + continuation, with `grade_prefix`); without any boxed answer the continuation
    alone is graded with the grader's fallbacks, so numbers in the kept thoughts never count
    as an answer the model did not give."""
    from longshort.dialogue.protocol import extract_boxed

    boxed = extract_boxed(prefix + continuation if cfg.grade_prefix else continuation)
    if boxed is not None:
        return bool(grader("\\boxed{" + boxed + "}", answer, choices=choices))
    return bool(grader(continuation, answer, choices=choices))



def score_record(record: dict[str, Any], engine: Any, config: ImportanceConfig | None = None, *,
                 progress: bool = False, grader: Callable[..., bool] | None = None) -> dict[str, Any]:
    """Score one chunked trace; returns a new record with per-thought importance fields."""
    from longshort.engines.base import GenerationRequest, SamplingParams

    cfg = config or ImportanceConfig()
    if cfg.metric not in METRICS:
        raise InputError(f"unknown importance metric {cfg.metric!r}; known: {sorted(METRICS)}")
    if grader is None:
        from longshort.evaluation.grading import grade as grader
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
    gen_tokens = 0
    truncated_rollouts = 0
    for i, res in enumerate(results):
        prefix = requests[i].assistant_prefix
        ok = 0
        for c in res.completions:
            gen_tokens += c.num_tokens
            truncated_rollouts += c.finish_reason == "length"
            ok += bool(grade_rollout(prefix, c.text, record["answer"], choices, cfg, grader))
        right[i] = ok
        acc[i] = ok / len(res.completions) if res.completions else None
    fields = METRICS[cfg.metric](acc, p["y"], p["Y"], cfg)
    thoughts = []
    for k, (t, f) in enumerate(zip(record["thoughts"], fields, strict=True), start=1):
        thoughts.append({**t, "acc": acc[k], "acc_prev": acc[k - 1], "right": right[k], "y": p["y"][k], **f})
    flags = list(record.get("flags", []))
    if last < n:
        flags.append("context_truncated")
    out = {k: v for k, v in record.items() if k != "thoughts"}
    out.update(thoughts=thoughts, flags=list(dict.fromkeys(flags)), importance={
        "metric": cfg.metric, "rollouts": cfg.rollouts, "delta": cfg.delta, "alpha": cfg.alpha,
        "acc0": acc[0], "acc_full": acc[n], "Y": p["Y"], "scored_thoughts": max(0, last),
        "model": getattr(engine, "model_name", ""), "generated_tokens": gen_tokens,
        "num_rollouts": sum(len(r.completions) for r in results),
        "rollouts_cut_by_length": truncated_rollouts, "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed})
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

