"""Importance of thoughts (DESIGN §5): what each thought adds to the chance of the right answer.

For a trace with thoughts 1..n and i = 0..n, prefix i is the question (solo long-CoT prompt)
with `"<think>\\n"` + thoughts 1..i as the beginning of the model's reply. An *estimator*
measures acc_i, the accuracy after prefix i (`acc_0` = question alone):

- `rollout` (the paper's): sample R continuations (one request with `n=R`, so the engine
  encodes the shared prefix once) and grade each continuation alone (`grade_rollout`): its
  last `\\boxed{}` is its answer; no box, or cut by `max_new_tokens`, is *unfinished* and wrong
  (counted per thought); a box that is only in the kept prefix never counts; there is no
  last-number fallback. acc_i = right_i / R.
- `forced`: close the thinking after prefix i, prefill an answer opening that ends in
  `\\boxed{` and read the model's probability of the gold answer and the closing brace
  (`forced_accuracies`); no sampling. The trace is encoded once and the probes branch off its
  KV cache (`engines/probe.py`), so a trace costs about one forward pass.
- `ablation`: how much less likely the scoring model finds the rest of the trace without the
  thought (`ablation_accuracies`); no sampling.

This module holds the settings, the metrics and the cost plan; `thoughts/scoring.py` measures
acc_i with the estimators and writes scored records (`score_record`, `iter_score`).

Then, per thought i, whatever the estimator:

- effectiveness `e_i = acc_i - acc_{i-1}`,
- efficiency decay `d_i = delta ** (y_i / Y)` (y_i = tokens up to the end of thought i,
  Y = tokens of the whole trace; delta = 0.25),
- joint score `s_i = e_i * d_i` in [-1, 1] and its bound: for `rollout` Hoeffding's
  `2 * d_i * sqrt(ln(4 / alpha) / (2 R))` (|ŝ_i - s_i| ≤ bound with probability ≥ 1 - alpha;
  ≈ 1.32·d_i at R = 5, alpha = 0.05, wider than the score range: single scores are noisy, pooled
  ones are not); for `forced` None (acc_i is computed exactly, there is no sampling error).

The metric is pluggable: `METRICS` maps a name to a function computing the per-thought fields
from the accuracies and token positions (`register_metric`).

A prefix that would not fit the model's context is not scored: later thoughts get
`score: None` and the record the flag `context_truncated` (never a crash).

>>> [round(x["score"], 3) for x in gain_decay([0.0, 0.6, 0.6, 1.0], [0, 10, 20, 40], 40,
...                                            ImportanceConfig())]
[0.424, 0.0, 0.1]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from longshort.errors import InputError

# --------------------------------------------------------------------------- config


DEFAULT_OPENINGS = ("The final answer is \\boxed{", "**Final Answer**\n\\boxed{")
# The rest tokens the `ablation` estimator counts with ablation_tokens='math': any token holding a
# digit, or one that is a lone operator (spaces around it allowed); '**' (markdown) does not match.
MATH_TOKENS = r"\d|^\s*[-+*/=^<>×÷−·≤≥]\s*$"


class ImportanceConfig(BaseModel):
    """Settings of importance scoring (both estimators of the accuracy term)."""

    estimator: Literal["rollout", "forced", "ablation"] = Field(
        "rollout", description="How acc_i is measured: 'rollout' (the paper's: sample R continuations, "
        "grade their boxed answers), 'forced' (close the thinking, prefill an answer opening, read the "
        "model's probability of the gold answer; no sampling) or 'ablation' (how much less likely the "
        "model finds the rest of the trace without the thought: its share of the trace's dependence; no "
        "sampling). forced and ablation need the transformers engine.")
    rollouts: int = Field(5, ge=1, description="rollout: continuations R per prefix; 5 as in the paper "
                          "(Hoeffding bound 2·d_i·sqrt(ln(4/alpha)/(2R)) ≈ 1.32·d_i at alpha=0.05).")
    delta: float = Field(0.25, gt=0.0, le=1.0, description="Length decay base δ: a thought at the "
                         "end of the trace is worth δ of one at the start; 0.25 as in the paper.")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="rollout: confidence level of the stored bound "
                         "(holds with probability ≥ 1 - alpha); 0.05 is the usual 95%.")
    metric: str = Field("gain_decay", description="Scoring function from METRICS; 'gain_decay' is "
                        "DESIGN §5 (e_i · d_i), 'gain' drops the length decay.")
    max_new_tokens: int = Field(512, ge=1, description="rollout: tokens per continuation; enough for a small "
                                "model to finish short problems, raise it for real long-CoT models.")
    temperature: float = Field(0.7, ge=0.0, description="rollout: sampling temperature: >0 so "
                               "the R samples differ; 0.7 is the usual setting for R1-style models.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="rollout: nucleus mass (R1 default).")
    seed: int = Field(0, description="rollout: base seed; each (trace, prefix) request gets a seed derived "
                      "from it, so reruns and the reuse/no-reuse benchmark sample the same.")
    max_context: int | None = Field(None, ge=16, description="Model context in tokens; None = read "
                                    "from the engine's model config (max_position_embeddings).")
    stop: list[str] = Field(default_factory=list, description="rollout: extra stop strings; "
                            "none by default, the continuation runs to EOS or max_new_tokens.")
    answer_openings: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPENINGS), min_length=1,
        description="forced: answer openings written after '\\n</think>\\n\\n', each ending in "
        "'\\boxed{'; acc_i is the mean over them (two common R1-style phrasings, so no single wording "
        "decides the score). Set them to the scoring model's own answer format when it has one.")

    ablation_window: int | None = Field(
        256, ge=1, description="ablation: tokens after a thought whose likelihood is compared with and "
        "without it (None = the whole rest of the response); bounds the cost on long traces.")
    ablation_tokens: Literal["math", "all"] = Field(
        "math", description="ablation: which tokens of the rest count: 'math' (a token with a digit, or a "
        "lone arithmetic or relational operator: the results later steps use, `MATH_TOKENS`) or 'all' "
        "(every token, so the words a plan or a restatement predicts count too). On planted traces 'math' "
        "ranks computations above restatements and problem read-backs, which 'all' scores high.")
    ablation_tail: bool = Field(True, description="ablation: the rest includes the response after "
                                "'</think>' (the written answer), so thoughts whose results the answer "
                                "restates count.")

    @field_validator("answer_openings")
    @classmethod
    def _openings_end_in_box(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if not o.endswith("\\boxed{")]
        if bad:
            raise ValueError(f"every answer opening must end with '\\boxed{{' (got {bad[0]!r})")
        return v


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
    (each within sqrt(ln(4/alpha)/(2R)) with probability ≥ 1-alpha/2).

    >>> round(hoeffding_bound(1.0, 5, 0.05), 2)  # R = 5: wider than the score range [-1, 1] itself
    1.32
    """
    return 2.0 * d * math.sqrt(math.log(4.0 / alpha) / (2.0 * rollouts))


def estimation_bound(d: float, cfg: ImportanceConfig) -> float | None:
    """The stored bound of a score: Hoeffding for `rollout`; None for `forced`, whose acc_i is an
    exact probability (no sampling error to bound; what it leaves out is a bias, see the docs)."""
    return hoeffding_bound(d, cfg.rollouts, cfg.alpha) if cfg.estimator == "rollout" else None


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
        out.append({"e": e, "d": d, "score": e * d, "bound": estimation_bound(d, cfg)})
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
        out.append({"e": e, "d": 1.0, "score": e, "bound": estimation_bound(1.0, cfg)})
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
    """The context to plan against: the config's `max_context`, else the engine's (`Engine.max_context`)."""
    return cfg.max_context or engine.max_context


def _count(engine: Any, text: str) -> int:
    return int(engine.count_tokens(text)) if text else 0


def token_positions(engine: Any, record: dict[str, Any]) -> tuple[list[int], int]:
    """y (n+1 cumulative token counts at thought ends, y[0]=0) and Y (tokens of the response)."""
    y = [0]
    for t in record["thoughts"]:
        y.append(y[-1] + _count(engine, t["text"]))
    Y = max(_count(engine, record["response"]), y[-1], 1)
    return y, Y


def solo_messages(problem: str) -> list[dict[str, str]]:
    from longshort.dialogue.protocol import render_input

    messages, _ = render_input("long", problem, solo=True)
    return messages


def _base_prompt_tokens(engine: Any, messages: list[dict[str, str]]) -> int:
    from longshort.engines.base import GenerationRequest

    render = getattr(engine, "render", None)
    if callable(render):
        return _count(engine, render(GenerationRequest(messages=messages)))
    return sum(_count(engine, m["content"]) + 4 for m in messages) + 8


ESTIMATES = ("cap", "trace", "pilot")


def plan_trace(engine: Any, record: dict[str, Any], cfg: ImportanceConfig) -> dict[str, Any]:
    """What scoring one trace needs: prefixes that fit, rollouts, and generated-token estimates.

    `est_cap`: every rollout runs to `max_new_tokens` (an upper bound, and what small or random
    models do: they rarely close a boxed answer early). `est_trace`: each rollout writes as much
    as the rest of the trace after its prefix, capped (what a model that continues like the trace
    would write). `est_tokens` = `est_cap` (see `plan` for the pilot estimate). The `forced`
    estimator samples nothing: its estimates are 0 and `forward_tokens` counts what it encodes.
    """
    texts = [t["text"] for t in record["thoughts"]]
    n = len(texts)
    messages = solo_messages(record["problem"])
    base = _base_prompt_tokens(engine, messages)
    y, Y = token_positions(engine, record)
    ctx = engine_context(engine, cfg)
    estimator = getattr(cfg, "estimator", "rollout")
    forced = estimator in ("forced", "ablation")  # neither samples
    room = 0 if forced else cfg.max_new_tokens
    last = n
    if ctx is not None:
        # +2 tokens per thought for the "\n\n" joins and "<think>\n"; a small margin for merges
        while last >= 0 and base + y[last] + 2 * last + 4 + room > ctx:
            last -= 1
    rollouts = 0 if forced else (last + 1) * cfg.rollouts
    rest = [max(16, Y - y[i]) for i in range(n + 1)]
    est_trace = 0 if forced else sum(min(cfg.max_new_tokens, rest[i]) for i in range(last + 1)) * cfg.rollouts
    est_cap = rollouts * cfg.max_new_tokens
    forward = 0
    if estimator == "ablation" and last >= 0:
        window = cfg.ablation_window or Y
        forward = base + y[last] + 2 * last + sum(min(window, Y - y[i]) for i in range(1, last + 1))
    elif forced and last >= 0:
        openings = getattr(cfg, "answer_openings", []) or [""]
        probe = sum(_count(engine, o) for o in openings) + len(openings) * (_count(engine, str(record["answer"])) + 8)
        forward = base + y[last] + 2 * last + 4 + (last + 1) * probe
    return {"messages": messages, "texts": texts, "y": y, "Y": Y, "last": last,
            "rollouts": rollouts, "est_tokens": est_cap, "est_cap": est_cap, "est_trace": est_trace,
            "forward_tokens": forward, "prompt_tokens": base}


def plan(records: Sequence[dict[str, Any]], engine: Any, config: ImportanceConfig | None = None,
         *, tokens_per_rollout: float | None = None) -> dict[str, Any]:
    """Totals for a dry run (and the check after a run): traces, thoughts, prefixes (requests),
    rollouts and generated tokens: `est_generated_tokens` with `estimate_method`:

    - "pilot": `tokens_per_rollout` measured on a few real rollouts (`pilot`) times the rollouts;
    - "cap" (default without a pilot): every rollout runs to `max_new_tokens` (an upper bound);
    - "forced": no sampling, 0 generated tokens; `forward_tokens` is what gets encoded.

    `est_cap_tokens` and `est_trace_tokens` (as long as the rest of the trace) are always given.
    """
    cfg = config or ImportanceConfig()
    totals: dict[str, Any] = {"traces": len(records), "thoughts": 0, "requests": 0, "rollouts": 0,
                              "est_generated_tokens": 0, "est_cap_tokens": 0, "est_trace_tokens": 0,
                              "forward_tokens": 0, "truncated_traces": 0}
    for r in records:
        p = plan_trace(engine, r, cfg)
        totals["thoughts"] += len(p["texts"])
        totals["requests"] += p["last"] + 1
        totals["rollouts"] += p["rollouts"]
        totals["est_cap_tokens"] += p["est_cap"]
        totals["est_trace_tokens"] += p["est_trace"]
        totals["forward_tokens"] += p["forward_tokens"]
        totals["truncated_traces"] += p["last"] < len(p["texts"])
    if getattr(cfg, "estimator", "rollout") in ("forced", "ablation"):
        totals["estimate_method"] = cfg.estimator
    elif tokens_per_rollout is not None:
        totals["estimate_method"] = "pilot"
        per = min(float(tokens_per_rollout), float(cfg.max_new_tokens))
        totals["est_generated_tokens"] = int(round(per * totals["rollouts"]))
        totals["tokens_per_rollout"] = round(per, 1)
    else:
        totals["estimate_method"] = "cap"
        totals["est_generated_tokens"] = totals["est_cap_tokens"]
    return totals


def pilot(records: Sequence[dict[str, Any]], engine: Any, config: ImportanceConfig | None = None,
          prefixes: int = 3) -> dict[str, Any]:
    """Measure generated tokens per rollout on `prefixes` real prefixes, spread evenly over all
    prefixes to score (the first, the last, and between), with the very requests (prompt, prefix,
    seed, R) the scoring run will send, so `plan(..., tokens_per_rollout=...)` extrapolates from
    the model's real behaviour. Costs `prefixes` x R rollouts."""
    from longshort.engines.base import GenerationRequest, SamplingParams

    cfg = config or ImportanceConfig()
    pairs = []
    for r in records:
        p = plan_trace(engine, r, cfg)
        pairs.extend((r, p, i) for i in range(p["last"] + 1))
    if not pairs or prefixes < 1:
        return {"prefixes": 0, "rollouts": 0, "tokens": 0, "tokens_per_rollout": None, "cut_share": None}
    k = min(prefixes, len(pairs))
    picks = [pairs[round(j * (len(pairs) - 1) / max(1, k - 1))] for j in range(k)] if k > 1 else [pairs[0]]
    reqs = [GenerationRequest(
        messages=p["messages"], assistant_prefix=think_prefix(p["texts"], i),
        params=SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.rollouts,
                              max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop),
                              seed=request_seed(cfg.seed, str(r.get("id")), i)),
        meta={"id": str(r.get("id")), "prefix": i, "pilot": True}) for r, p, i in picks]
    outs = engine.generate(reqs)
    comps = [c for o in outs for c in o.completions]
    tokens = sum(c.num_tokens for c in comps)
    return {"prefixes": k, "rollouts": len(comps), "tokens": tokens,
            "tokens_per_rollout": tokens / len(comps) if comps else None,
            "cut_share": sum(c.finish_reason == "length" for c in comps) / len(comps) if comps else None}


def describe_plan(p: dict[str, Any], cfg: ImportanceConfig) -> str:
    """One line for a cost plan (CLI dry run, pipeline before its score stage)."""
    head = f"{p['traces']} trace(s), {p['thoughts']} thoughts, {p['requests']} requests (prefixes)"
    if p.get("estimate_method") in ("forced", "ablation"):
        return head + (f", no rollouts ({p['estimate_method']} estimator): ~{p['forward_tokens']} tokens "
                       "encoded, 0 generated")
    how = {"cap": f"every rollout runs to max_new_tokens={cfg.max_new_tokens}",
           "pilot": f"pilot: {p.get('tokens_per_rollout')} tokens per real rollout x rollouts"}[p["estimate_method"]]
    return (head + f" x {cfg.rollouts} = {p['rollouts']} rollouts, ~{p['est_generated_tokens']} generated tokens "
            f"({how}; upper bound {p['est_cap_tokens']}, as long as the rest of each trace {p['est_trace_tokens']})")


def describe_actual(p: dict[str, Any], generated: int) -> str:
    """Estimate vs actual generated tokens, for the summary after scoring."""
    est = p.get("est_generated_tokens", 0)
    ratio = f", actual/estimate {generated / est:.2f}" if est else ""
    return f"generated {generated} tokens; estimated {est} ({p.get('estimate_method')}){ratio}"
