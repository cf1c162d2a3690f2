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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from longshort.errors import InputError, LongshortError

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
    messages = _messages(record["problem"])
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
    request = GenerationRequest(messages=_messages(record["problem"]), assistant_prefix=THINK_OPEN + "\n")
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
    request = GenerationRequest(messages=_messages(record["problem"]), assistant_prefix=THINK_OPEN + "\n")
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


def _rollout_accuracies(record: dict[str, Any], engine: Any, cfg: ImportanceConfig, grader: Callable[..., bool],
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
        acc, info, per_prefix = _rollout_accuracies(record, engine, cfg, grader, progress)
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

