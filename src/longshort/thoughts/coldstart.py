"""Cold-start synthesis: scored long-CoT traces → two-role dialogues → SFT sets (DESIGN §5).

1. **Assignment by importance**: the highest-scoring thoughts go to the long model, the rest to
   the short model. Default (`relative`, 0.5): every thought whose score is at least 0.5 × the
   trace's mean positive score per thought (Σ max(score, 0) / n): scale-free, so it holds for
   any estimator and any number of thoughts; `relative=0` is "every positive score". Or
   `threshold` (score ≥ τ, absolute), or `ratio` (the top share of thoughts by score, positive
   scores only). Every rule is a cut on the score, so a long thought never scores below a short one
   (except where `max_long_turns` merges a short run into the long model, flagged). A thought
   that is only a final-answer statement never goes long (the answer is the short role's).
   When no thought qualifies, the single highest-scoring one goes long (flag `top_forced_long`):
   the long model must speak.
2. **The opening**: the long model speaks first (protocol), but the first thoughts of a trace
   (understanding, restating the question) often gain nothing. With `opening="compress"` (the
   default) the short-assigned thoughts before the first long one keep their short role and are
   compressed (as any short thought) into the opening of the first long turn, so the long turn
   starts with the given facts in brief and then the first important thought in full; no
   thought is promoted on position alone (flag `opening_compressed`). `opening="long"` gives
   them to the long model verbatim instead (flag `opening_given_long`; the old behaviour).
3. **The final answer belongs to the short role**: final-answer statements (any ``\\boxed``, or
   a sentence such as "**Final Answer**", "Answer:", "the answer is …", "Therefore the final
   answer …", in any casing, see `is_final_answer_sentence`) are removed from long turns and from
   hand-back short turns; only the clause before such a statement survives when it carries math
   ("So 14 − 6 = 8, so the answer is 8." keeps "So 14 − 6 = 8."). The closing short turn restates
   the answer: it ends with ``\\boxed{answer}`` (the gold answer, added when its own last box is
   not it) and ``</answer>``.
4. **Compression** of short thoughts: `drop` removes pure re-verification / abandoned
   alternatives / hesitations that gained no accuracy (e ≤ 0) and keeps the rest verbatim;
   `extractive` also keeps, in what remains, only the sentences that carry the math (numbers,
   equations, formulas); `llm` asks an engine to rewrite each short thought concisely (empty or
   longer answers fall back to `extractive`, flagged).
5. **Dialogue**: consecutive thoughts of one role form one turn; long turns are
   `<think>\\n…\\n</think>`, short turns `<answer>\\n…\\n</rethink>`; the last turn is always a
   short turn ending with `\\boxed{answer}` and `</answer>` (added after a final long turn, from
   the trace's post-thinking answer when it has one).
6. **SFT examples**, one per turn, in the docs/architecture.md format: `{id, role, problem, answer,
   prompt, assistant_prefix, completion}` with `prompt, assistant_prefix =
   protocol.render_input(role, problem, earlier_turns)`.
7. **Stats**: roles, turns, tokens per role, the short turns' compression (their tokens over the
   original tokens of the thoughts they replace), and, when records carry the planted truth
   (`gold_thoughts` with `kind`), the share of essential thoughts given to the long role and of
   redundant thoughts given to the short role (a gold thought's role is the role of most of its
   steps, so chunker boundaries work too).

`synthesize(records, config) -> (long_examples, short_examples, stats)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.dialogue.protocol import TAGS, extract_boxed, format_turn, render_input
from longshort.thoughts.final_answer import MATH_RE, has_final_answer, strip_final_answer


class ColdStartConfig(BaseModel):
    """How thoughts are assigned to roles and compressed."""

    threshold: float | None = Field(None, description="Long iff score ≥ threshold (absolute; "
                                    "overrides `relative`); None = `ratio`, else `relative`.")
    relative: float = Field(0.5, ge=0.0, description="Default rule: long iff score > 0 and score ≥ "
                            "relative × the trace's mean positive score per thought (Σ max(score,0)/n). "
                            "0 = every positive score. 0.5: on planted traces scored by ablation, "
                            "essential → long and redundant → short 0.86 to 0.91 each, where 0.25 let "
                            "redundant → short fall to 0.79 (docs/thoughts.md has the measurements).")
    ratio: float | None = Field(None, gt=0.0, le=1.0, description="Long = the top ratio of thoughts "
                                "by score (positive scores only); None = not used.")
    compressor: Literal["drop", "extractive", "llm"] = Field("extractive", description="How short "
                                                             "thoughts are shortened; extractive needs no model and keeps the math.")
    drop_categories: list[str] = Field(["verification", "alternative", "other"], description="Short "
                                       "thoughts of these categories with no accuracy gain are dropped "
                                       "(pure re-checks, abandoned ideas, hesitation).")
    require_correct: bool = Field(True, description="Skip traces whose own final answer is wrong: "
                                  "cold-start data must not teach wrong answers.")
    opening: Literal["compress", "long"] = Field("compress", description="Short-assigned thoughts "
                                                 "before the first long one (the long model speaks first): "
                                                 "compress them into the opening of the first long turn "
                                                 "(default: roles follow importance only), or give them to "
                                                 "the long model verbatim.")
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
    """Role ("long"/"short") per thought and flags (module docstring, points 1 and 2).
    Thoughts without a score go short."""
    cfg = config or ColdStartConfig()
    # a thought that is nothing but a final-answer statement is the short role's, whatever its score
    eligible = [bool(strip_final_answer(t.get("text", ""))[0]) if "text" in t else True for t in thoughts]
    scores = [t.get("score") if ok else None for t, ok in zip(thoughts, eligible, strict=True)]
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
        scored = [s for s in scores if s is not None]
        cut = cfg.relative * sum(max(s, 0.0) for s in scored) / len(scored) if scored else 0.0
        for i, s in enumerate(scores):
            if s is not None and s > 0 and s >= cut:
                roles[i] = "long"
    flags = []
    if roles and "long" not in roles:
        candidates = [i for i, s in enumerate(scores) if s is not None] or \
                     [i for i, ok in enumerate(eligible) if ok] or [0]
        top = max(candidates, key=lambda i: (scores[i] if scores[i] is not None else -math.inf, -i))
        roles[top] = "long"
        flags.append("top_forced_long")
    if roles and roles[0] != "long":
        first = roles.index("long")
        if cfg.opening == "long":
            roles[:first] = ["long"] * first
            flags.append("opening_given_long")
        else:
            flags.append("opening_compressed")
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
_FILLER = re.compile(r"^(hmm+|wait|okay|ok|alright|oh|so,? let me|let me (think|see)|right|yes|good|hold on|"
                     r"i think|well)\b[^0-9=]*$", re.I)


def _is_droppable(t: dict[str, Any], cfg: ColdStartConfig) -> bool:
    """A re-check / alternative / hesitation that gained nothing: no accuracy gain, or (with a
    `threshold`) a score below the cut that decides importance."""
    if t.get("category") not in cfg.drop_categories:
        return False
    e, score = t.get("e"), t.get("score")
    if e is None or e <= 0:
        return True
    return cfg.threshold is not None and (score is None or score < cfg.threshold)


def extract_math(text: str) -> str:
    """Keep the sentences/lines of `text` that carry math; drop filler. Empty if none."""
    kept = []
    for s in _SENT.split(text):
        s = s.strip()
        if not s or _FILLER.match(s):
            continue
        if MATH_RE.search(s):
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


def _same_answer(boxed: str | None, answer: str) -> bool:
    if boxed is None:
        return False
    if boxed.strip() == answer.strip():
        return True
    from longshort.evaluation.grading import grade

    return bool(grade(f"\\boxed{{{boxed}}}", answer))


def build_dialogue(record: dict[str, Any], roles: Sequence[str], short_texts: Sequence[str]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Turns of one trace and flags (module docstring, points 2, 3 and 5). Each turn is
    ``{role, text, final, thoughts: [start steps], idx: [thought indices], opening: [indices of
    short thoughts compressed into this long turn], from_after: bool}``."""
    thoughts = record["thoughts"]
    answer = str(record["answer"]).strip()
    flags: list[str] = []
    stripped = 0
    first_long = roles.index("long") if "long" in roles else len(roles)
    segs: list[dict[str, Any]] = []
    for i, (t, role) in enumerate(zip(thoughts, roles, strict=True)):
        if role == "long":
            body, n = strip_final_answer(t["text"].strip())
            stripped += n
        else:
            body = short_texts[i]
        opening = i < first_long and role == "short" and first_long < len(roles)
        if opening:  # it joins a long turn: no final answer there either
            body, n = strip_final_answer(body)
            stripped += n
        seg_role = "long" if opening else role
        if segs and segs[-1]["role"] == seg_role:
            seg = segs[-1]
        else:
            seg = {"role": seg_role, "idx": [], "parts": [], "opening": []}
            segs.append(seg)
        seg["idx"].append(i)
        if opening:
            seg["opening"].append(i)
        if body:
            seg["parts"].append(body)
    # hand-back short turns never state the final answer (only the closing turn does)
    closing_is_trace = bool(segs) and segs[-1]["role"] == "short"
    for k, seg in enumerate(segs):
        if seg["role"] == "short" and not (closing_is_trace and k == len(segs) - 1):
            parts = []
            for part in seg["parts"]:
                part, n = strip_final_answer(part)
                stripped += n
                if part:
                    parts.append(part)
            seg["parts"] = parts
    # a short segment that compressed to nothing disappears (unless it closes the dialogue)
    merged: list[dict[str, Any]] = []
    for k, seg in enumerate(segs):
        if seg["role"] == "short" and not seg["parts"] and k != len(segs) - 1:
            flags.append("empty_short_turn_removed")
            continue
        if merged and merged[-1]["role"] == seg["role"]:
            for key in ("idx", "parts", "opening"):
                merged[-1][key] += seg[key]
        else:
            merged.append(seg)
    if not merged or merged[-1]["role"] == "long":
        final = _strip_tags(record.get("after") or "")
        body = extract_math(final) if final else ""
        merged.append({"role": "short", "idx": [], "parts": [body] if body else [], "opening": [],
                       "from_after": bool(final)})
        flags.append("final_short_turn_added")
    last = merged[-1]
    body_final = "\n\n".join(last["parts"])
    if not _same_answer(extract_boxed(body_final), answer):
        closing = f"The final answer is \\boxed{{{answer}}}."
        body_final = f"{body_final}\n\n{closing}" if body_final else closing
    last["parts"] = [body_final]
    if stripped:
        flags.append("final_answer_stripped")
    if any(seg["opening"] for seg in merged):
        flags.append("opening_compressed")
    turns = []
    for k, seg in enumerate(merged):
        body = _strip_tags("\n\n".join(seg["parts"])).strip()
        final = k == len(merged) - 1
        text = format_turn(seg["role"], f"\n{body}\n", final=final and seg["role"] == "short")
        turns.append({"role": seg["role"], "text": text, "final": final, "body": body,
                      "thoughts": [thoughts[i]["start"] for i in seg["idx"]], "idx": list(seg["idx"]),
                      "opening": list(seg["opening"]), "from_after": bool(seg.get("from_after"))})
    return turns, list(dict.fromkeys(flags))


def planted_roles(record: dict[str, Any], roles: Sequence[str]) -> list[tuple[str, str]] | None:
    """(planted kind, role) per gold thought, when `record` carries `gold_thoughts` with `kind`
    (or `essential`): the role of a gold thought is the role holding most of its steps (ties:
    short), so chunker boundaries that differ from the gold ones work too. None without truth."""
    gold = record.get("gold_thoughts")
    if not gold:
        return None
    step_role: dict[int, str] = {}
    for t, role in zip(record["thoughts"], roles, strict=True):
        for k in range(int(t["start"]), int(t["end"]) + 1):
            step_role[k] = role
    out = []
    for g in gold:
        kind = g.get("kind") or ("essential" if g.get("essential") else "redundant")
        steps = range(int(g["start"]), int(g["end"]) + 1)
        n_long = sum(step_role.get(k) == "long" for k in steps)
        out.append((kind, "long" if 2 * n_long > len(steps) else "short"))
    return out


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
                             "thoughts_opening_compressed": 0,
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
    tok = {"long": 0, "short": 0, "original": 0, "short_replaced": 0, "short_bodies": 0}
    per_dialogue_turns = []
    planted: dict[str, dict[str, int]] = {}
    long_with_answer = 0
    for r, roles, short, flags in kept:
        turns, dflags = build_dialogue(r, roles, short)
        flags = list(dict.fromkeys(flags + dflags))
        for f in flags:
            stats["flags"][f] = stats["flags"].get(f, 0) + 1
        stats["dialogues"] += 1
        stats["thoughts_long"] += roles.count("long")
        stats["thoughts_short"] += roles.count("short")
        stats["thoughts_dropped"] += sum(1 for role, s in zip(roles, short, strict=True) if role == "short" and not s)
        stats["thoughts_opening_compressed"] += sum(len(t["opening"]) for t in turns)
        per_dialogue_turns.append(len(turns))
        tok["original"] += count("\n\n".join(t["text"] for t in r["thoughts"]))
        for kind, role in planted_roles(r, roles) or []:
            planted.setdefault(kind, {"long": 0, "short": 0})[role] += 1
        for k, turn in enumerate(turns):
            messages, prefix = render_input(turn["role"], r["problem"], [t["text"] for t in turns[:k]])
            ex = {"id": f"{r['id']}-t{k}", "source_id": r["id"], "role": turn["role"], "problem": r["problem"],
                  "answer": str(r["answer"]), "prompt": messages, "assistant_prefix": prefix,
                  "completion": turn["text"], "turn_index": k, "num_turns": len(turns),
                  "final": turn["final"], "thought_starts": turn["thoughts"], "flags": flags}
            if r.get("choices"):
                ex["choices"] = r["choices"]
            tok[turn["role"]] += count(turn["text"])
            if turn["role"] == "long":
                long_with_answer += has_final_answer(turn["body"])
            else:
                tok["short_bodies"] += count(turn["body"])
                replaced = [r["thoughts"][i]["text"] for i in turn["idx"]]
                if turn["from_after"]:
                    replaced.append(_strip_tags(r.get("after") or ""))
                tok["short_replaced"] += count("\n\n".join(replaced)) if replaced else 0
            (long_ex if turn["role"] == "long" else short_ex).append(ex)
            stats["long_turns" if turn["role"] == "long" else "short_turns"] += 1
    total = tok["long"] + tok["short"]

    def share(kind: str, role: str) -> float | None:
        c = planted.get(kind)
        return round(c[role] / (c["long"] + c["short"]), 4) if c and c["long"] + c["short"] else None

    stats.update(
        examples={"long": len(long_ex), "short": len(short_ex)},
        turns=sum(per_dialogue_turns),
        turns_per_dialogue={"mean": round(sum(per_dialogue_turns) / len(per_dialogue_turns), 3)
                            if per_dialogue_turns else 0.0,
                            "max": max(per_dialogue_turns, default=0)},
        tokens={"long": tok["long"], "short": tok["short"], "original_thinking": tok["original"],
                "short_bodies": tok["short_bodies"], "short_replaced_original": tok["short_replaced"]},
        token_share={"long": round(tok["long"] / total, 4) if total else 0.0,
                     "short": round(tok["short"] / total, 4) if total else 0.0},
        compression_ratio=round(total / tok["original"], 4) if tok["original"] else None,
        short_compression=round(tok["short_bodies"] / tok["short_replaced"], 4) if tok["short_replaced"] else None,
        long_turns_with_final_answer=long_with_answer,
        planted={"essential_long_share": share("essential", "long"),
                 "redundant_short_share": share("redundant", "short"),
                 "neutral_long_share": share("neutral", "long"),
                 "counts": planted} if planted else None,
        config=cfg.model_dump(),
        token_counter="tokenizer" if count_tokens else "approx (words + punctuation)",
    )
    return long_ex, short_ex, stats
