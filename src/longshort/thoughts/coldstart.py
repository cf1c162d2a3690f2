"""Cold-start synthesis: scored long-CoT traces → two-role dialogues → SFT sets (DESIGN §5).

1. **Assignment**: thoughts whose importance is high go to the long model, the rest to the
   short model. Default: every thought with a positive score; or `threshold` (score ≥ τ), or
   `ratio` (the top share of thoughts by score, positive scores only). The long model speaks
   first (protocol), so the first thought always goes to it (flag `first_forced_long`).
2. **Compression** of short thoughts: `drop` removes pure re-verification / abandoned
   alternatives / hesitations that gained no accuracy (e ≤ 0) and keeps the rest verbatim;
   `extractive` also keeps, in what remains, only the sentences that carry the math (numbers,
   equations, formulas); `llm` asks an engine to rewrite each short thought concisely (empty or
   longer answers fall back to `extractive`, flagged).
3. **Dialogue**: consecutive thoughts of one role form one turn; long turns are
   `<think>\\n…\\n</think>`, short turns `<answer>\\n…\\n</rethink>`; the last turn is always a
   short turn ending with `\\boxed{answer}` and `</answer>` (added after a final long turn,
   from the trace's post-thinking answer when it has one).
4. **SFT examples**, one per turn, in the docs/architecture.md format: `{id, role, problem, answer,
   prompt, assistant_prefix, completion}` with `prompt, assistant_prefix =
   protocol.render_input(role, problem, earlier_turns)`.

`synthesize(records, config) -> (long_examples, short_examples, stats)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.dialogue.protocol import TAGS, extract_boxed, format_turn, render_input


class ColdStartConfig(BaseModel):
    """How thoughts are assigned to roles and compressed."""

    threshold: float | None = Field(None, description="Long iff score ≥ threshold; None = use "
                                    "`ratio`, or by default every positive score (any accuracy gain).")
    ratio: float | None = Field(None, gt=0.0, le=1.0, description="Long = the top ratio of thoughts "
                                "by score (positive scores only); None = not used.")
    compressor: Literal["drop", "extractive", "llm"] = Field("extractive", description="How short "
                                                             "thoughts are shortened; extractive needs no model and keeps the math.")
    drop_categories: list[str] = Field(["verification", "alternative", "other"], description="Short "
                                       "thoughts of these categories with no accuracy gain are dropped "
                                       "(pure re-checks, abandoned ideas, hesitation).")
    require_correct: bool = Field(True, description="Skip traces whose own final answer is wrong: "
                                  "cold-start data must not teach wrong answers.")
    first_long: bool = Field(True, description="Force the first thought to the long model, which "
                             "speaks first in the protocol.")
    max_long_turns: int | None = Field(4, ge=1, description="At most this many long turns per "
                                       "dialogue (the collaborative loop's default max_turns is 4): the "
                                       "shortest short runs between long turns are given to the long model "
                                       "until it fits. None = no limit.")
    llm_max_new_tokens: int = Field(256, ge=8, description="Token limit of one llm rewrite; short "
                                    "turns should be short.")
    llm_temperature: float = Field(0.0, ge=0.0, description="Greedy rewrites: reproducible data.")


# --------------------------------------------------------------------------- assignment


def assign_roles(thoughts: Sequence[dict[str, Any]], config: ColdStartConfig | None = None
                 ) -> tuple[list[str], list[str]]:
    """Role ("long"/"short") per thought and flags. Thoughts without a score go short."""
    cfg = config or ColdStartConfig()
    scores = [t.get("score") for t in thoughts]
    roles = ["short"] * len(thoughts)
    if cfg.threshold is not None:
        for i, s in enumerate(scores):
            if s is not None and s >= cfg.threshold:
                roles[i] = "long"
    elif cfg.ratio is not None:
        k = math.ceil(cfg.ratio * len(thoughts))
        ranked = sorted((i for i, s in enumerate(scores) if s is not None and s > 0),
                        key=lambda i: -scores[i])
        for i in ranked[:k]:
            roles[i] = "long"
    else:
        for i, s in enumerate(scores):
            if s is not None and s > 0:
                roles[i] = "long"
    flags = []
    if cfg.first_long and roles and roles[0] != "long":
        roles[0] = "long"
        flags.append("first_forced_long")
    if cfg.max_long_turns is not None and _limit_long_turns(roles, thoughts, cfg.max_long_turns):
        flags.append("long_turns_merged")
    return roles, flags


def _runs(roles: Sequence[str]) -> list[tuple[str, int, int]]:
    """(role, first index, last index) of each run of equal roles."""
    runs: list[tuple[str, int, int]] = []
    for i, r in enumerate(roles):
        if runs and runs[-1][0] == r:
            runs[-1] = (r, runs[-1][1], i)
        else:
            runs.append((r, i, i))
    return runs


def _limit_long_turns(roles: list[str], thoughts: Sequence[dict[str, Any]], k: int) -> bool:
    """Give the shortest short runs between long runs to the long model until at most k long
    runs remain (in place). Returns whether anything changed."""
    changed = False
    while True:
        runs = _runs(roles)
        if sum(r[0] == "long" for r in runs) <= k:
            return changed
        inner = [(sum(len(thoughts[i].get("text", "")) for i in range(a, b + 1)), a, b)
                 for j, (role, a, b) in enumerate(runs) if role == "short" and 0 < j < len(runs) - 1]
        _, a, b = min(inner)
        for i in range(a, b + 1):
            roles[i] = "long"
        changed = True


# --------------------------------------------------------------------------- compression

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\\$(*])|\n+")
_MATH = re.compile(r"\d|=|\\[a-zA-Z]+|[+\-*/^<>≤≥×÷]|\$")
_FILLER = re.compile(r"^(hmm+|wait|okay|ok|alright|oh|so,? let me|let me (think|see)|right|yes|good|hold on|"
                     r"i think|well)\b[^0-9=]*$", re.I)


def _is_droppable(t: dict[str, Any], cfg: ColdStartConfig) -> bool:
    e = t.get("e")
    return t.get("category") in cfg.drop_categories and (e is None or e <= 0)


def extract_math(text: str) -> str:
    """Keep the sentences/lines of `text` that carry math; drop filler. Empty if none."""
    kept = []
    for s in _SENT.split(text):
        s = s.strip()
        if not s or _FILLER.match(s):
            continue
        if _MATH.search(s):
            kept.append(s)
    return " ".join(kept)


def compress_thought(t: dict[str, Any], cfg: ColdStartConfig) -> str:
    """The short-model text for one thought under `drop` or `extractive` ("" = dropped)."""
    if _is_droppable(t, cfg):
        return ""
    if cfg.compressor == "drop":
        return t["text"].strip()
    kept = extract_math(t["text"])
    if not kept and t.get("category") in ("computation", "conclusion"):
        first = _SENT.split(t["text"].strip())[0].strip()
        return first
    return kept


REWRITE_PROMPT = ("Rewrite the following step of a solution as briefly as possible. Keep every "
                  "calculation and result, drop hesitation and repetition. Write only the rewritten "
                  "step.\n\nProblem: {problem}\n\nStep:\n{text}")


def _llm_compress(items: list[tuple[str, str]], engine: Any, cfg: ColdStartConfig) -> list[str | None]:
    """Rewrite (problem, text) items with an engine in one batch; None where unusable."""
    from longshort.engines.base import GenerationRequest, SamplingParams

    if not items:
        return []
    reqs = [GenerationRequest(messages=[{"role": "user", "content": REWRITE_PROMPT.format(problem=p, text=t)}],
                              params=SamplingParams(temperature=cfg.llm_temperature,
                                                    max_new_tokens=cfg.llm_max_new_tokens, seed=0))
            for p, t in items]
    outs = engine.generate(reqs)
    res: list[str | None] = []
    for (_, src), out in zip(items, outs, strict=True):
        text = _strip_tags(out.completions[0].text if out.completions else "").strip()
        res.append(text if text and len(text) < len(src) else None)
    return res


def _strip_tags(text: str) -> str:
    for tag in TAGS:
        text = text.replace(tag, "")
    return text


# --------------------------------------------------------------------------- dialogues


def approx_tokens(text: str) -> int:
    """A tokenizer-free token estimate (words and punctuation marks)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def build_dialogue(record: dict[str, Any], roles: Sequence[str], short_texts: Sequence[str]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Turns `{role, text, thoughts: [indices]}` of one trace, and flags (see module docstring)."""
    thoughts = record["thoughts"]
    segs: list[dict[str, Any]] = []
    for i, (t, role) in enumerate(zip(thoughts, roles, strict=True)):
        body = t["text"].strip() if role == "long" else short_texts[i]
        if segs and segs[-1]["role"] == role:
            segs[-1]["idx"].append(i)
            if body:
                segs[-1]["parts"].append(body)
        else:
            segs.append({"role": role, "idx": [i], "parts": [body] if body else []})
    flags: list[str] = []
    # a short segment that compressed to nothing disappears (unless it is the last one)
    merged: list[dict[str, Any]] = []
    for k, s in enumerate(segs):
        if s["role"] == "short" and not s["parts"] and k != len(segs) - 1:
            flags.append("empty_short_turn_removed")
            continue
        if merged and merged[-1]["role"] == s["role"]:
            merged[-1]["idx"] += s["idx"]
            merged[-1]["parts"] += s["parts"]
        else:
            merged.append(s)
    if not merged or merged[-1]["role"] == "long":
        final = record.get("after") or ""
        merged.append({"role": "short", "idx": [], "parts": [extract_math(_strip_tags(final))] if final else []})
        merged[-1]["parts"] = [p for p in merged[-1]["parts"] if p]
        flags.append("final_short_turn_added")
    answer = str(record["answer"]).strip()
    last = merged[-1]
    body_final = "\n\n".join(last["parts"])
    if extract_boxed(body_final) is None:
        closing = f"The final answer is \\boxed{{{answer}}}."
        body_final = f"{body_final}\n\n{closing}" if body_final else closing
    last["parts"] = [body_final]
    turns = []
    for k, s in enumerate(merged):
        body = _strip_tags("\n\n".join(s["parts"])).strip()
        final = k == len(merged) - 1
        text = format_turn(s["role"], f"\n{body}\n", final=final and s["role"] == "short")
        turns.append({"role": s["role"], "text": text, "thoughts": [thoughts[i]["start"] for i in s["idx"]],
                      "final": final})
    return turns, flags


def _trace_correct(record: dict[str, Any]) -> bool:
    from longshort.evaluation.grading import grade

    return bool(grade(record["response"], str(record["answer"]), choices=record.get("choices") or None))


def synthesize(records: Sequence[dict[str, Any]], config: ColdStartConfig | None = None, *,
               engine: Any = None, count_tokens: Callable[[str], int] | None = None
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Scored traces → (long SFT examples, short SFT examples, stats). See module docstring."""
    cfg = config or ColdStartConfig()
    count = count_tokens or approx_tokens
    if cfg.compressor == "llm" and engine is None:
        raise ValueError("the llm compressor needs an engine")
    stats: dict[str, Any] = {"traces": len(records), "dialogues": 0, "skipped_incorrect": 0,
                             "skipped_no_thoughts": 0, "turns": 0, "long_turns": 0, "short_turns": 0,
                             "thoughts_long": 0, "thoughts_short": 0, "thoughts_dropped": 0,
                             "llm_fallbacks": 0, "flags": {}}
    kept: list[tuple[dict[str, Any], list[str], list[str], list[str]]] = []
    for r in records:
        if not r.get("thoughts"):
            stats["skipped_no_thoughts"] += 1
            continue
        if cfg.require_correct and not _trace_correct(r):
            stats["skipped_incorrect"] += 1
            continue
        roles, flags = assign_roles(r["thoughts"], cfg)
        short = [compress_thought(t, cfg) if role == "short" else "" for t, role in zip(r["thoughts"], roles, strict=True)]
        kept.append((r, roles, short, flags))
    if cfg.compressor == "llm":
        todo = [(ri, i) for ri, (r, roles, short, _) in enumerate(kept) for i, role in enumerate(roles)
                if role == "short" and short[i]]
        rewrites = _llm_compress([(kept[ri][0]["problem"], kept[ri][0]["thoughts"][i]["text"]) for ri, i in todo],
                                 engine, cfg)
        for (ri, i), new in zip(todo, rewrites, strict=True):
            if new is None:
                stats["llm_fallbacks"] += 1
                kept[ri][3].append("llm_compress_fallback")
            else:
                kept[ri][2][i] = new
    long_ex: list[dict[str, Any]] = []
    short_ex: list[dict[str, Any]] = []
    tok = {"long": 0, "short": 0, "original": 0}
    per_dialogue_turns = []
    for r, roles, short, flags in kept:
        turns, dflags = build_dialogue(r, roles, short)
        flags = list(dict.fromkeys(flags + dflags))
        for f in flags:
            stats["flags"][f] = stats["flags"].get(f, 0) + 1
        stats["dialogues"] += 1
        stats["thoughts_long"] += roles.count("long")
        stats["thoughts_short"] += roles.count("short")
        stats["thoughts_dropped"] += sum(1 for role, s in zip(roles, short, strict=True) if role == "short" and not s)
        per_dialogue_turns.append(len(turns))
        tok["original"] += count("\n\n".join(t["text"] for t in r["thoughts"]))
        for k, turn in enumerate(turns):
            messages, prefix = render_input(turn["role"], r["problem"], [t["text"] for t in turns[:k]])
            ex = {"id": f"{r['id']}-t{k}", "source_id": r["id"], "role": turn["role"], "problem": r["problem"],
                  "answer": str(r["answer"]), "prompt": messages, "assistant_prefix": prefix,
                  "completion": turn["text"], "turn_index": k, "num_turns": len(turns),
                  "final": turn["final"], "thought_starts": turn["thoughts"], "flags": flags}
            if r.get("choices"):
                ex["choices"] = r["choices"]
            tok[turn["role"]] += count(turn["text"])
            (long_ex if turn["role"] == "long" else short_ex).append(ex)
            stats["long_turns" if turn["role"] == "long" else "short_turns"] += 1
    total = tok["long"] + tok["short"]
    stats.update(
        examples={"long": len(long_ex), "short": len(short_ex)},
        turns=sum(per_dialogue_turns),
        turns_per_dialogue={"mean": round(sum(per_dialogue_turns) / len(per_dialogue_turns), 3)
                            if per_dialogue_turns else 0.0,
                            "max": max(per_dialogue_turns, default=0)},
        tokens={"long": tok["long"], "short": tok["short"], "original_thinking": tok["original"]},
        token_share={"long": round(tok["long"] / total, 4) if total else 0.0,
                     "short": round(tok["short"] / total, 4) if total else 0.0},
        compression_ratio=round(total / tok["original"], 4) if tok["original"] else None,
        config=cfg.model_dump(),
        token_counter="tokenizer" if count_tokens else "approx (words + punctuation)",
    )
    return long_ex, short_ex, stats
