"""Group the steps of a long CoT into thoughts (DESIGN §5).

A thought is `{start, end, type, category, text}` with 1-based inclusive step indices; the
thoughts of a trace are contiguous and cover every step exactly once. Chunkers:

- `segment` (no model, the default): thoughts at the granularity people mark (one purpose per
  thought: understanding, plan, a derivation, a verification pass, an alternative, the
  conclusion), from generic cues, lexical cohesion and a target length that scales with the
  trace; see `thoughts.segment`.
- `heuristic` (no model, fine-grained): a new thought starts at a step that opens with a discourse marker
  ("Wait", "Alternatively", "Let me verify/check", "So the answer", "Hmm", "First/Next/Now", a
  case label...) or, inside long runs, where the vocabulary shifts (little overlap with the
  running thought). Each thought gets the category of its opening marker.
- `llm` (any engine): the numbered steps go to a model that returns JSON ranges with a type; an
  engine that can constrain its output to a JSON Schema (an OpenAI-compatible server, vLLM) is
  asked for `CHUNK_SCHEMA` directly, and every answer is still validated and repaired.
  The answer is validated for contiguity and coverage; small defects are repaired (overlaps
  clipped, gaps merged into the previous thought, ends extended); an unusable answer is
  retried (another seed) up to `max_retries` times, then the trace falls back to the
  model-free `fallback` chunker (`segment` by default) with the flag `llm_fallback`.

`chunk_records` runs either method on validated trace records and returns chunk records:
the trace fields plus `steps`, `thoughts`, `after` (post-thinking answer), `chunk_method`
and `flags`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.thoughts.segment import SegmentConfig, segment_chunk
from longshort.thoughts.steps import (  # noqa: F401 - CATEGORIES, normalize_category re-exported
    CATEGORIES,
    Steps,
    make_thought,
    normalize_category,
    split_steps,
)

# --------------------------------------------------------------------------- markers

_W = r"(?:wait|hmm+|hold on|oh|ah|okay|ok|alright|but|so|now|well)"
# (category, type, regex on the step's beginning); strong markers start a new thought.
_MARKERS: list[tuple[str, str, re.Pattern[str]]] = [
    ("conclusion", "conclusion", re.compile(
        r"^(\**final answer\**|(so|thus|therefore|hence)?,?\s*(the|my)\s+(final\s+)?answer\s+(is|should|must|would)"
        r"|in (conclusion|summary)|putting (it|this|everything) (all )?together|to summarize"
        r"|i think that'?s (the|it)|that'?s the answer)", re.I)),
    ("verification", "verification", re.compile(
        rf"^({_W}[,.!]?\s*)*(let me|let's|let us|i should|i'll|i will|i need to|i want to|we should|we can)?\s*"
        r"(just\s+)?(double[- ]?check|verify|re-?check|check|confirm|make sure|sanity[- ]check|validate|test)\b", re.I)),
    ("alternative", "alternative approach", re.compile(
        rf"^({_W}[,.!]?\s*)*(alternatively|another (way|approach|method|idea)|a different (way|approach)"
        r"|or maybe|maybe (there'?s|there is) a (better|simpler|different)|let me try (a different|another))", re.I)),
    ("other", "reflection", re.compile(
        r"^(wait|hmm+|hold on|but wait|oh|ah|no,|actually|oops|hmm,|uh)\b", re.I)),
    ("understanding", "problem understanding", re.compile(
        r"^(<think>\s*)?((okay|ok|alright|so|right)[,.!]?\s*)*(so\s+)?(i|we)\s+(have|need|am|'m|are|was)\b.*\b(problem|find|asked|given)"
        r"|^let me (read|restate|parse|understand|re-?read)|^the problem (says|asks|states|is|gives)"
        r"|^(we are|i am|i'm) (given|asked)", re.I)),
    ("planning", "planning", re.compile(
        r"^((okay|ok|alright|so|now)[,.!]?\s*)*(my plan|the plan|the (key|idea|strategy|approach) (is|here)"
        r"|i('ll| will) (handle|go|start|use|try)|let me (think about how|figure out how|start|plan|break|approach|try to)"
        r"|to solve this|first,? (i|we|let me|let's) (need|should|will|'ll|can)|maybe i can|perhaps i can)", re.I)),
    ("computation", "computation", re.compile(
        r"^((first|second|third|next|then|now|after that|finally|similarly|moving on|starting with"
        r"|case \d+|step \d+|part \(?[a-z0-9]\)?)\b[,:.]?|\*\*(step|case|part)\b)", re.I)),
]


_FINAL_LINE = re.compile(r"final answer", re.I)
_CONSEQUENCE = re.compile(r"^(so|therefore|thus|hence|i think)\b", re.I)


def classify_step(text: str) -> tuple[str | None, str | None]:
    """(category, type) of the discourse marker that opens a step, or (None, None)."""
    head = text.lstrip(" *#>-").strip()[:160]
    for cat, typ, rx in _MARKERS:
        if rx.search(head):
            return cat, typ
    return None, None


_WORD = re.compile(r"[a-z]{4,}|\d+(?:\.\d+)?", re.I)
_STOP = frozenset("that this with from have then they them there their what which when would "
                  "could should about into also some just like each only these those were been "
                  "does make need know think right okay first next wait maybe because let's".split())


def _vocab(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOP


class HeuristicConfig(BaseModel):
    """Settings of the rule-based chunker."""

    min_steps: int = Field(1, ge=1, description="Smallest thought in steps; 1 keeps one-paragraph "
                           "thoughts such as a lone re-check (they are what importance separates).")
    max_steps: int = Field(12, ge=1, description="A thought that reaches this many steps is cut "
                           "there; 12 paragraphs ≈ one sub-derivation in R1 traces.")
    shift_threshold: float = Field(0.05, ge=0.0, le=1.0, description="Start a new thought when a "
                                   "step shares less than this fraction of its content words with "
                                   "the running thought (a topic shift); low, so markers dominate.")
    shift_min_run: int = Field(4, ge=1, description="Only look for topic shifts once the running "
                               "thought has this many steps; short thoughts are not cut on vocabulary.")
    max_thoughts: int | None = Field(None, ge=1, description="Merge the smallest neighbouring "
                                     "thoughts until at most this many remain (caps Monte Carlo cost, "
                                     "(n+1)·R rollouts per trace); None = no cap.")
    merge_reflections: bool = Field(True, description="A bare 'Wait/Hmm' step followed by a "
                                    "check or alternative joins it, as one thought (R1 style).")


def heuristic_chunk(steps: Sequence[str], config: HeuristicConfig | None = None) -> list[dict[str, Any]]:
    """Thoughts from steps by discourse markers and topic shifts (see module docstring)."""
    cfg = config or HeuristicConfig()
    n = len(steps)
    if n == 0:
        return []
    labels = [classify_step(s) for s in steps]
    # "Therefore, m + n = 33." right before "**Final Answer**": the conclusion starts there
    for j in range(n - 1):
        if (labels[j][0] is None and _FINAL_LINE.match(steps[j + 1].lstrip(" *#"))
                and _CONSEQUENCE.match(steps[j])):
            labels[j] = ("conclusion", "conclusion")
    starts = [0]
    cats: list[str] = [labels[0][0] or "understanding"]
    types: list[str] = [labels[0][1] or "problem understanding"]
    run_vocab = _vocab(steps[0])
    for j in range(1, n):
        cat, typ = labels[j]
        run_len = j - starts[-1]
        boundary = False
        if cat is not None and run_len >= cfg.min_steps:
            boundary = True
            # "Wait," then "let me check" in the next step: keep the opener with what follows
            if (cfg.merge_reflections and cats[-1] == "other" and run_len == 1
                    and cat in ("verification", "alternative")):
                boundary = False
                cats[-1], types[-1] = cat, typ
            # the final-answer line right after "So the answer is": one conclusion
            elif cat == "conclusion" and cats[-1] == "conclusion":
                boundary = False
            # an idea followed by its one-step rejection ("Hmm, that gets messy"): one thought
            elif (cfg.merge_reflections and cat == "other" and cats[-1] == "alternative"
                  and run_len == 1):
                boundary = False
        elif cat is None and run_len >= cfg.shift_min_run:
            v = _vocab(steps[j])
            if v and len(v & run_vocab) / len(v) < cfg.shift_threshold:
                boundary, cat, typ = True, "computation", "computation"
        if run_len >= cfg.max_steps:
            boundary = True
            cat, typ = cat or cats[-1], typ or types[-1]
        if boundary:
            starts.append(j)
            cats.append(cat or "other")
            types.append(typ or "other")
            run_vocab = _vocab(steps[j])
        else:
            run_vocab |= _vocab(steps[j])
    spans = [[s + 1, (starts[k + 1] if k + 1 < len(starts) else n), types[k], cats[k]]
             for k, s in enumerate(starts)]
    if cfg.max_thoughts is not None:
        while len(spans) > cfg.max_thoughts:
            # merge the neighbouring pair covering the fewest steps; the longer part names it
            k = min(range(len(spans) - 1), key=lambda j: spans[j + 1][1] - spans[j][0])
            a, b = spans[k], spans[k + 1]
            keep = a if a[1] - a[0] >= b[1] - b[0] else b
            spans[k:k + 2] = [[a[0], b[1], keep[2], keep[3]]]
    return [make_thought(steps, s, e, typ, cat) for s, e, typ, cat in spans]


# --------------------------------------------------------------------------- validation / repair


def check_thoughts(thoughts: Sequence[dict[str, Any]], n_steps: int) -> list[str]:
    """Problems with a thought list (empty = contiguous, full coverage, well-typed)."""
    problems: list[str] = []
    expected = 1
    for k, t in enumerate(thoughts):
        s, e = t.get("start"), t.get("end")
        if not isinstance(s, int) or not isinstance(e, int):
            problems.append(f"thought {k + 1}: start/end must be integers")
            return problems
        if s != expected:
            problems.append(f"thought {k + 1}: starts at {s}, expected {expected}")
        if e < s:
            problems.append(f"thought {k + 1}: end {e} < start {s}")
        expected = e + 1
    if expected != n_steps + 1:
        problems.append(f"thoughts end at step {expected - 1}, trace has {n_steps}")
    return problems


def repair_ranges(ranges: Iterable[tuple[int, int, str]], n_steps: int
                  ) -> tuple[list[tuple[int, int, str]], list[str]]:
    """Make (start, end, type) ranges contiguous with full coverage; return them and the repairs.

    Out-of-range bounds are clipped to [1, n_steps]; ranges are sorted; an overlap is clipped
    (the later range starts after the earlier one ends; a range swallowed whole is dropped);
    a gap is merged into the previous range (or the next one at the start); the last range is
    extended to the last step.
    """
    repairs: list[str] = []
    cleaned = []
    for s, e, typ in ranges:
        s2, e2 = max(1, min(s, e)), min(n_steps, max(s, e))
        if (s2, e2) != (s, e):
            repairs.append("clipped_bounds")
        if s2 <= e2:
            cleaned.append((s2, e2, typ))
    cleaned.sort(key=lambda r: (r[0], r[1]))
    out: list[tuple[int, int, str]] = []
    for s, e, typ in cleaned:
        if out:
            ps, pe, pt = out[-1]
            if s <= pe:
                repairs.append("overlap_clipped")
                s = pe + 1
                if s > e:
                    continue
            elif s > pe + 1:
                repairs.append("gap_merged")
                out[-1] = (ps, s - 1, pt)
        elif s > 1:
            repairs.append("gap_merged")
            s = 1
        out.append((s, e, typ))
    if out and out[-1][1] < n_steps:
        repairs.append("gap_merged")
        out[-1] = (out[-1][0], n_steps, out[-1][2])
    return out, sorted(set(repairs))


# --------------------------------------------------------------------------- llm chunker

CHUNK_PROMPT = (
    "Below is a worked solution to a problem, written as numbered steps. Split it into thoughts. "
    "A thought is a run of consecutive steps that serve one purpose: reading and restating the "
    "problem, making a plan, carrying out one derivation or calculation, checking a result, trying "
    "a different approach, or stating the conclusion. Start a new thought only where the purpose "
    "changes, not at every step. The thoughts must cover steps 1 to {n} in order, without gaps or "
    "overlaps.\n\n"
    "Problem:\n{problem}\n\nSteps:\n{steps}\n\n"
    "Answer with JSON only, in this form:\n"
    '{{"blocks": [{{"start": 1, "end": 3, "type": "problem understanding"}}, '
    '{{"start": 4, "end": 9, "type": "computation"}}]}}'
)

#: The JSON Schema of a chunker answer, sent to engines that constrain their output to a schema
#: (`Engine.structured_output`: an OpenAI-compatible server's `response_format`, vLLM's guided
#: decoding). The answer is still validated and repaired: a schema fixes the shape, not the ranges.
CHUNK_SCHEMA = {
    "type": "object",
    "properties": {"blocks": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}, "type": {"type": "string"}},
        "required": ["start", "end", "type"], "additionalProperties": False}}},
    "required": ["blocks"], "additionalProperties": False,
}


class LLMChunkConfig(BaseModel):
    """Settings of the model-based chunker."""

    max_retries: int = Field(2, ge=0, description="Extra attempts (new seed) after an unusable "
                             "answer; 2 fixes most sampling accidents without tripling the cost.")
    max_step_chars: int = Field(300, ge=20, description="Each step is shown truncated to this many "
                                "characters so long traces fit a small model's context.")
    max_new_tokens: int = Field(1024, ge=16, description="Room for the JSON answer (~15 tokens per "
                                "block; 1024 covers 60+ blocks).")
    temperature: float = Field(0.1, ge=0.0, description="Low, as in the LongShort chunker: the "
                               "grouping should be stable; >0 so retries differ.")
    seed: int = Field(0, description="Base seed; attempt k uses seed + k.")
    max_uncovered: float = Field(0.5, ge=0.0, le=1.0, description="An answer whose valid ranges "
                                 "leave more than this share of steps uncovered is retried, not "
                                 "repaired (a gap that large means the model did not do the task).")


def build_chunk_prompt(problem: str, steps: Sequence[str], max_step_chars: int = 300) -> str:
    def short(s: str) -> str:
        s = " ".join(s.split())
        return s if len(s) <= max_step_chars else s[: max_step_chars - 3] + "..."

    numbered = "\n".join(f"Step {i}: {short(s)}" for i, s in enumerate(steps, start=1))
    return CHUNK_PROMPT.format(n=len(steps), problem=problem.strip(), steps=numbered)


def fit_chunk_prompt(problem: str, steps: Sequence[str], engine: Any, cfg: LLMChunkConfig) -> str | None:
    """The chunking prompt, with steps cut shorter until prompt + answer fit the engine's context
    (when the engine tells its context length); None when even 30 characters per step do not fit."""
    ctx = engine.max_context
    for chars in (cfg.max_step_chars, 120, 60, 30):
        if chars > cfg.max_step_chars:
            continue
        prompt = build_chunk_prompt(problem, steps, chars)
        if ctx is None or engine.count_tokens(prompt) + 32 + cfg.max_new_tokens <= ctx:
            return prompt
    return None


def _find_json(text: str) -> Any:
    """The first JSON list/object in a model answer (code fences and prose around it allowed)."""
    text = re.sub(r"```(?:json)?", "", text)
    starts = [i for i, ch in enumerate(text) if ch in "[{"]
    for i in starts:
        depth = 0
        for j in range(i, len(text)):
            if text[j] in "[{":
                depth += 1
            elif text[j] in "]}":
                depth -= 1
                if depth == 0:
                    chunk = text[i:j + 1]
                    for candidate in (chunk, chunk.replace("'", '"')):
                        try:
                            return json.loads(candidate)
                        except json.JSONDecodeError:
                            pass
                    break
    raise ValueError("no JSON list or object found")


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("boolean step index")
    if isinstance(v, (int, float)) and int(v) == v:
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*(step\s*)?\d+\s*", v, re.I):
        return int(re.sub(r"\D", "", v))
    raise ValueError(f"step index {v!r} is not an integer")


def parse_llm_ranges(text: str) -> list[tuple[int, int, str]]:
    """(start, end, type) ranges from a chunker answer: a JSON list of blocks, or an object
    keyed "block 1", "block 2"... (the LongShort format, with "block type"). ValueError if none."""
    data = _find_json(text)
    if isinstance(data, dict):
        if "blocks" in data or "thoughts" in data:
            data = data.get("blocks", data.get("thoughts"))
        else:
            items = sorted(data.items(), key=lambda kv: int(re.sub(r"\D", "", kv[0]) or 0))
            data = [v for _, v in items]
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty list of blocks")
    out = []
    for b in data:
        if not isinstance(b, dict):
            raise ValueError("a block is not an object")
        typ = b.get("type", b.get("block type", b.get("block_type", b.get("category", "other"))))
        out.append((_as_int(b.get("start")), _as_int(b.get("end")), str(typ or "other")))
    return out


def _llm_attempt(text: str, n_steps: int, cfg: LLMChunkConfig
                 ) -> tuple[list[tuple[int, int, str]] | None, list[str], str | None]:
    """Ranges (repaired) from one answer, the repairs made, or None and the reason to retry."""
    try:
        ranges = parse_llm_ranges(text)
    except (ValueError, TypeError) as exc:
        return None, [], f"unparseable: {exc}"
    covered = set()
    for s, e, _ in ranges:
        covered.update(range(max(1, s), min(n_steps, e) + 1))
    if 1 - len(covered) / n_steps > cfg.max_uncovered:
        return None, [], f"covers only {len(covered)}/{n_steps} steps"
    fixed, repairs = repair_ranges(ranges, n_steps)
    if not fixed:
        return None, [], "no usable range"
    return fixed, repairs, None


def llm_chunk_many(items: Sequence[tuple[str, Sequence[str]]], engine: Any,
                   config: LLMChunkConfig | None = None,
                   heuristic: HeuristicConfig | None = None, progress: bool = False,
                   fallback: Any = None) -> list[tuple[list[dict[str, Any]], list[str]]]:
    """Chunk many traces `(problem, steps)` with an engine, batched: each round sends one
    request per trace still unresolved. Returns (thoughts, flags) per trace. `fallback(problem,
    steps)` chunks a trace the model could not (default: `heuristic_chunk`)."""
    if fallback is None:
        def fallback(problem: str, steps: Sequence[str]) -> list[dict[str, Any]]:
            return heuristic_chunk(steps, heuristic)
    from longshort.engines.base import GenerationRequest, SamplingParams

    cfg = config or LLMChunkConfig()
    schema = CHUNK_SCHEMA if getattr(engine, "structured_output", False) else None
    results: list[tuple[list[dict[str, Any]], list[str]] | None] = [None] * len(items)
    prompts: dict[int, str] = {}
    for i, (problem, steps) in enumerate(items):
        prompt = fit_chunk_prompt(problem, steps, engine, cfg)
        if prompt is None:  # cannot fit the model's context even with steps cut short
            results[i] = (fallback(problem, steps), ["llm_prompt_too_long", "llm_fallback"])
        else:
            prompts[i] = prompt
    pending = sorted(prompts)
    notes: dict[int, list[str]] = {i: [] for i in pending}
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        reqs = [GenerationRequest(
            messages=[{"role": "user", "content": prompts[i]}],
            params=SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                  seed=cfg.seed + attempt, json_schema=schema), meta={"index": i})
            for i in pending]
        outs = engine.generate(reqs, progress=progress)
        still = []
        for i, out in zip(pending, outs, strict=True):
            steps = items[i][1]
            text = out.completions[0].text if out.completions else ""
            fixed, repairs, why = _llm_attempt(text, len(steps), cfg)
            if fixed is None:
                notes[i].append(why or "unusable")
                still.append(i)
                continue
            flags = ["llm_repaired"] + [f"llm_{r}" for r in repairs] if repairs else []
            if attempt:
                flags.append(f"llm_retries={attempt}")
            results[i] = ([make_thought(steps, s, e, t) for s, e, t in fixed], flags)
        pending = still
    for i in pending:
        results[i] = (fallback(*items[i]), ["llm_fallback"])
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- records


class ChunkConfig(BaseModel):
    """Which chunker and its settings (used by `longshort chunk` and the pipeline)."""

    method: Literal["segment", "heuristic", "llm", "gold"] = Field(
        "segment", description="'segment' (no model) groups steps by purpose at human granularity; "
        "'heuristic' (no model) splits at every discourse marker; 'llm' asks an engine; 'gold' uses "
        "the planted thoughts of synthetic traces.")
    segment: SegmentConfig = Field(default_factory=SegmentConfig,
                                   description="Human-granularity chunker settings.")
    fallback: Literal["segment", "heuristic"] = Field("segment", description="Model-free chunker "
                                                      "used when the llm answer is unusable.")
    heuristic: HeuristicConfig = Field(default_factory=HeuristicConfig,
                                       description="Rule-based chunker settings.")
    llm: LLMChunkConfig = Field(default_factory=LLMChunkConfig, description="Model-based chunker settings.")


def chunk_record(rec: dict[str, Any], thoughts: list[dict[str, Any]], steps: Steps, method: str,
                 flags: list[str]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k not in ("steps", "thoughts")}
    out.update(steps=steps.steps, thoughts=thoughts, after=steps.after, split=steps.split,
               chunk_method=method, flags=list(dict.fromkeys(steps.flags + flags)))
    return out


def chunk_records(records: Sequence[dict[str, Any]], config: ChunkConfig | None = None, *,
                  engine: Any = None, progress: bool = False) -> list[dict[str, Any]]:
    """Chunk validated trace records (see `thoughts.ingest.load_traces`)."""
    cfg = config or ChunkConfig()
    split = [split_steps(r["response"]) for r in records]
    if cfg.method == "llm":
        if engine is None:
            raise ValueError("the llm chunker needs an engine")
        def fallback(problem: str, steps: Sequence[str]) -> list[dict[str, Any]]:
            if cfg.fallback == "segment":
                return segment_chunk(steps, problem, cfg.segment)
            return heuristic_chunk(steps, cfg.heuristic)

        res = llm_chunk_many([(r["problem"], s.steps) for r, s in zip(records, split, strict=True)],
                             engine, cfg.llm, cfg.heuristic, progress=progress, fallback=fallback)
        return [chunk_record(r, t, s, "llm", f) for r, s, (t, f) in zip(records, split, res, strict=True)]
    out = []
    for r, s in zip(records, split, strict=True):
        if cfg.method == "gold":
            gold = r.get("gold_thoughts")
            if not gold:
                raise ValueError(f"record {r.get('id')}: method 'gold' needs gold_thoughts (synthetic traces)")
            th = [make_thought(s.steps, g["start"], g["end"], g["type"], g.get("category")) for g in gold]
            problems = check_thoughts(th, len(s.steps))
            if problems:
                raise ValueError(f"record {r.get('id')}: gold_thoughts invalid: {problems[0]}")
            out.append(chunk_record(r, th, s, "gold", []))
        elif cfg.method == "segment":
            out.append(chunk_record(r, segment_chunk(s.steps, r.get("problem", ""), cfg.segment), s, "segment", []))
        else:
            out.append(chunk_record(r, heuristic_chunk(s.steps, cfg.heuristic), s, "heuristic", []))
    return out


def chunk(response: str, method: str = "segment", *, problem: str = "", engine: Any = None,
          config: ChunkConfig | None = None) -> list[dict[str, Any]]:
    """Thoughts of one response (convenience wrapper over `chunk_records`)."""
    cfg = (config or ChunkConfig()).model_copy(update={"method": method})
    rec = {"id": "0", "problem": problem, "answer": "", "response": response}
    return chunk_records([rec], cfg, engine=engine)[0]["thoughts"]
