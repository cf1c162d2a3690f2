"""Cold-start synthesis: role assignment, compressors, dialogue structure, SFT format, stats."""

from __future__ import annotations

import pytest

from longshort.dialogue.protocol import extract_boxed, is_valid_turn, render_input
from longshort.engines.base import Completion, Engine, GenerationResult
from longshort.thoughts.chunking import ChunkConfig, chunk_records, make_thought
from longshort.thoughts.coldstart import (
    ColdStartConfig,
    assign_roles,
    compress_thought,
    extract_math,
    synthesize,
)
from longshort.thoughts.final_answer import is_final_answer_sentence, strip_final_answer
from longshort.thoughts.steps import split_steps
from longshort.thoughts.synthetic import generate


def _scored(n=6, seed=0):
    """Synthetic traces with planted scores: essential thoughts positive, the rest zero/negative."""
    recs = chunk_records(generate(n, seed=seed), ChunkConfig(method="gold"))
    for r in recs:
        for t, g in zip(r["thoughts"], r["gold_thoughts"], strict=True):
            t["e"] = 0.4 if g["essential"] else (-0.2 if g["kind"] == "redundant" else 0.0)
            t["score"] = t["e"] * 0.8
    return recs


def _check_dialogue(examples_by_turn):
    turns = [ex["completion"] for ex in examples_by_turn]
    roles = [ex["role"] for ex in examples_by_turn]
    assert roles[0] == "long" and roles[-1] == "short"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), "roles must alternate"
    for k, (role, text) in enumerate(zip(roles, turns, strict=True)):
        assert is_valid_turn(role, text), text
        if role == "long":
            assert text.startswith("<think>\n") and text.endswith("\n</think>")
            assert "\\boxed" not in text and "final answer" not in text.lower(), text
        elif k == len(turns) - 1:
            assert text.endswith("</answer>") and extract_boxed(text) is not None
        else:
            assert text.endswith("</rethink>") and "\\boxed" not in text


def _by_dialogue(long_ex, short_ex):
    d: dict[str, list] = {}
    for ex in long_ex + short_ex:
        d.setdefault(ex["source_id"], []).append(ex)
    return {k: sorted(v, key=lambda e: e["turn_index"]) for k, v in d.items()}


def test_dialogues_follow_the_protocol_and_sft_format():
    recs = _scored()
    long_ex, short_ex, stats = synthesize(recs)
    dialogues = _by_dialogue(long_ex, short_ex)
    assert len(dialogues) == len(recs) == stats["dialogues"]
    answers = {r["id"]: r["answer"] for r in recs}
    for rid, exs in dialogues.items():
        _check_dialogue(exs)
        assert extract_boxed(exs[-1]["completion"]) == answers[rid]
        assert [e["turn_index"] for e in exs] == list(range(len(exs)))
        for k, ex in enumerate(exs):
            messages, prefix = render_input(ex["role"], ex["problem"], [e["completion"] for e in exs[:k]])
            assert ex["prompt"] == messages and ex["assistant_prefix"] == prefix
            assert set(ex) >= {"id", "role", "problem", "answer", "prompt", "assistant_prefix", "completion"}
    # essential computations are in long turns, dropped re-checks appear nowhere
    for r in recs:
        long_text = "\n".join(e["completion"] for e in dialogues[r["id"]] if e["role"] == "long")
        all_text = "\n".join(e["completion"] for e in dialogues[r["id"]])
        for t, g in zip(r["thoughts"], r["gold_thoughts"], strict=True):
            if g["essential"]:
                assert t["text"] in long_text
            if g["type"] == "re-verification":
                assert t["text"] not in all_text
    assert stats["examples"] == {"long": len(long_ex), "short": len(short_ex)}
    assert stats["turns"] == len(long_ex) + len(short_ex)
    assert stats["token_share"]["long"] + stats["token_share"]["short"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < stats["compression_ratio"] < 1
    assert 0 < stats["short_compression"] < 1 and stats["long_turns_with_final_answer"] == 0
    assert stats["planted"]["essential_long_share"] == 1.0 and stats["planted"]["redundant_short_share"] == 1.0


def test_assignment_threshold_ratio_and_opening():
    th = [{"score": s} for s in (0.0, 0.5, -0.1, 0.2, None, 0.05)]
    # roles follow the score alone; the short opening is compressed into the first long turn
    assert assign_roles(th, ColdStartConfig(relative=0.25)) == (["short", "long", "short", "long", "short", "long"],
                                                                ["opening_compressed"])
    # the default cut is relative: 0.5 x mean positive score per thought (0.75 / 5 = 0.15 -> 0.075)
    roles, _ = assign_roles(th)  # cut 0.075: the 0.05 thought goes short
    assert roles == ["short", "long", "short", "long", "short", "short"]
    scaled = [{"score": None if t["score"] is None else t["score"] * 40} for t in th]
    assert assign_roles(scaled, ColdStartConfig(relative=0.5))[0] == roles  # scale-free
    assert assign_roles(th, ColdStartConfig(relative=0.0))[0] == assign_roles(th, ColdStartConfig(relative=0.25))[0]
    roles, flags = assign_roles(th, ColdStartConfig(opening="long"))
    assert roles[0] == "long" and flags == ["opening_given_long"]
    roles, _ = assign_roles(th, ColdStartConfig(threshold=0.1))
    assert roles == ["short", "long", "short", "long", "short", "short"]
    roles, _ = assign_roles(th, ColdStartConfig(ratio=0.2))  # ceil(1.2) = 2 thoughts: 0.5 and 0.2
    assert roles == ["short", "long", "short", "long", "short", "short"]
    # no positive score at all: the single best thought goes long
    roles, flags = assign_roles([{"score": s} for s in (-0.2, 0.0, -0.1)])
    assert roles == ["short", "long", "short"] and "top_forced_long" in flags
    # a thought that only states the final answer never goes long, whatever its score
    th = [{"score": 0.3, "text": "x = 2 + 2 = 4."}, {"score": 0.9, "text": "**Final Answer**\n\\boxed{4}"}]
    assert assign_roles(th)[0] == ["long", "short"]


def test_compressors():
    cfg_drop = ColdStartConfig(compressor="drop")
    check = {"text": "Wait, let me check: 2 + 3 = 5. Yes.", "category": "verification", "e": 0.0}
    assert compress_thought(check, cfg_drop) == ""
    useful_check = {**check, "e": 0.2}
    assert compress_thought(useful_check, cfg_drop) == check["text"]
    comp = {"text": "Hmm, okay.\n\nSo 4 * 5 = 20 apples. That is nice to know.", "category": "computation", "e": 0.0}
    assert compress_thought(comp, cfg_drop) == comp["text"]
    assert compress_thought(comp, ColdStartConfig()) == "So 4 * 5 = 20 apples."
    assert extract_math("I think so. Then x = 3.") == "Then x = 3."


class RewriteEngine(Engine):
    name = "rewrite"

    def __init__(self):
        self.calls = []

    def generate(self, requests, *, progress=False):
        self.calls.append(list(requests))
        outs = []
        for r in requests:
            step = r.messages[0]["content"].split("Step:\n", 1)[1]
            # shorten the computation steps; for the others answer something too long (fallback)
            text = "short: " + step.split(".")[0] if "=" in step else step + " and more words."
            outs.append(GenerationResult([Completion(text, 3, "stop")], 10, r))
        return outs

    def count_tokens(self, text):
        return len(text.split())


def test_llm_compressor_batches_and_falls_back():
    recs = _scored(3, seed=4)
    for r in recs:  # everything but the first thought goes short
        for t in r["thoughts"][1:]:
            t["score"], t["e"] = -0.1, 0.1
    eng = RewriteEngine()
    long_ex, short_ex, stats = synthesize(recs, ColdStartConfig(compressor="llm"), engine=eng)
    assert len(eng.calls) == 1  # one batch for all short thoughts of all traces
    assert any("short: " in e["completion"] for e in short_ex)
    assert stats["llm_fallbacks"] > 0 and stats["flags"].get("llm_compress_fallback", 0) > 0
    for exs in _by_dialogue(long_ex, short_ex).values():
        _check_dialogue(exs)
    with pytest.raises(ValueError, match="needs an engine"):
        synthesize(recs, ColdStartConfig(compressor="llm"))


def test_incorrect_traces_are_skipped_unless_asked():
    recs = _scored(2, seed=1)
    wrong = dict(recs[0], answer=str(int(recs[0]["answer"]) + 1))
    long_ex, short_ex, stats = synthesize([wrong, recs[1]])
    assert stats["skipped_incorrect"] == 1 and stats["dialogues"] == 1
    _, _, stats2 = synthesize([wrong, recs[1]], ColdStartConfig(require_correct=False))
    assert stats2["dialogues"] == 2


def test_all_important_still_leaves_the_answer_to_the_short_role():
    for seed in range(4):
        rec = _scored(1, seed=seed)[0]
        for t in rec["thoughts"]:
            t["score"] = 0.3  # everything is important, the conclusion too (an over-crediting scorer)
        long_ex, short_ex, stats = synthesize([rec])
        assert len(long_ex) == 1 and len(short_ex) == 1
        assert short_ex[0]["final"] and short_ex[0]["completion"].endswith("</answer>")
        assert extract_boxed(short_ex[0]["completion"]) == rec["answer"]
        assert "\\boxed" not in long_ex[0]["completion"] and stats["long_turns_with_final_answer"] == 0


def test_long_turns_are_limited_by_merging_the_shortest_short_runs():
    th = [{"score": s, "text": t} for s, t in
          [(0.5, "a"), (0, "xx"), (0.5, "b"), (0, "y"), (0.5, "c"), (0, "zzz"), (0.5, "d"), (0, "end")]]
    roles, flags = assign_roles(th, ColdStartConfig(max_long_turns=2))
    # "y" (1 char) goes first, then "xx" (2) rather than "zzz" (3)
    assert roles == ["long"] * 5 + ["short", "long", "short"] and flags == ["long_turns_merged"]
    roles, flags = assign_roles(th, ColdStartConfig(max_long_turns=None))
    assert roles.count("long") == 4 and flags == []
    roles, flags = assign_roles(th, ColdStartConfig(max_long_turns=1))
    assert roles == ["long"] * 7 + ["short"] and flags == ["long_turns_merged"]


@pytest.mark.parametrize("text", [
    "**Final Answer**", "Final answer: 12", "FINAL ANSWER: 3", "**Answer:** 7", "Answer: $x = 2$", "## Answer",
    "The answer is 5.", "So the answer is $\\frac{1}{2}$.", "Therefore the answer must be 4.",
    "Thus, the final result is 9.", "Hence answer = 3", "my answer would be 10", "$$\\boxed{12}$$",
    "It is \\fbox{3}.", "So, the answer: 8.",
])
def test_final_answer_statements_are_recognised(text):
    assert is_final_answer_sentence(text)


@pytest.mark.parametrize("text", [
    "We need the answer to the question of how many there are.", "So 9 + 5 = 14.", "Let me reconsider.",
    "Does that answer make sense here?", "The answers to parts (a) and (b) differ", "Answering this needs care.",
])
def test_ordinary_sentences_are_not_final_answers(text):
    assert not is_final_answer_sentence(text)


def test_strip_final_answer_keeps_the_math_and_the_layout():
    text = "First, $a = 3$.\n\nThen $b = 2a = 6$, so the answer is 6.\nDone.\n\n$$\n\\boxed{6}\n$$"
    kept, n = strip_final_answer(text)
    assert kept == "First, $a = 3$.\n\nThen $b = 2a = 6$.\nDone." and n == 2
    assert strip_final_answer("No answer here: just 2 + 2 = 4.") == ("No answer here: just 2 + 2 = 4.", 0)
    assert strip_final_answer("**Answer:** \\boxed{4}") == ("", 1)


# --------------------------------------------------------------------------- another template

def _hand_trace(rid, problem, answer, thoughts, after=""):
    """A scored trace written by hand: thoughts = [(category, text, score, planted kind)]."""
    thinking = "\n\n".join(text for _, text, _, _ in thoughts)
    response = f"<think>\n{thinking}\n</think>" + (f"\n\n{after}" if after else "")
    steps = split_steps(response)
    out, pos = [], 1
    for cat, text, score, _ in thoughts:
        n = len([p for p in text.split("\n\n") if p.strip()])
        t = make_thought(steps.steps, pos, pos + n - 1, cat, cat)
        t.update(score=score, e=score)
        out.append(t)
        pos += n
    assert pos - 1 == len(steps.steps)
    return {"id": rid, "problem": problem, "answer": answer, "response": response, "steps": steps.steps,
            "after": steps.after, "thoughts": out}


# scores as a faulty scorer may give them: the conclusion credited (it holds the box)
HAND = [
    _hand_trace("geo-1", "A right triangle has legs 6 and 8. Find the radius of its inscribed circle.", "2", [
        ("understanding", "We want the inradius $r$ of a right triangle with legs 6 and 8.", 0.0, "neutral"),
        ("computation", "The hypotenuse comes first: $c = \\sqrt{6^2 + 8^2} = \\sqrt{100} = 10$.", 0.35, "essential"),
        ("alternative", "Let me reconsider whether I need the hypotenuse at all. Perhaps a formula with the "
                        "legs alone exists, but I do not remember it reliably.", -0.05, "redundant"),
        ("computation", "For a right triangle $r = \\frac{a + b - c}{2}$, so $r = \\frac{6 + 8 - 10}{2} = 2$, "
                        "which means the answer is 2.", 0.3, "essential"),
        ("verification", "Sanity check with the area: $A = \\frac{1}{2} \\cdot 6 \\cdot 8 = 24$ and $s = 12$, "
                         "so $r = A/s = 2$. Consistent.", 0.0, "redundant"),
        ("conclusion", "**Answer:**\n\n$$\\boxed{2}$$", 0.4, "neutral"),
    ], after="The inradius is $\\boxed{2}$."),
    _hand_trace("alg-1", "Solve for $x$: $3x + 7 = 22$.", "5", [
        ("computation", "Step 1: isolate the term with $x$. Subtracting 7 from both sides gives $3x = 15$.", 0.5,
         "essential"),
        ("verification", "Hmm, let me reconsider: did I subtract correctly? 22 - 7 = 15, yes.", -0.1, "redundant"),
        ("computation", "Routine: 15 is divisible by 3.", 0.0, "neutral"),
        ("computation", "Step 2: divide both sides by 3, so $x = 15 / 3 = 5$, and the answer is 5.", 0.4, "essential"),
        ("verification", "Plugging back in: $3(5) + 7 = 22$. ✓", 0.0, "redundant"),
        ("conclusion", "THEREFORE THE ANSWER IS $\\boxed{5}$.", 0.2, "neutral"),
    ]),
    _hand_trace("geo-2", "A trapezoid has parallel sides 5 and 9 and height 3. Find its area.", "21", [
        ("understanding", "Okay, so we have a trapezoid with bases 5 and 9 and height 3.", 0.0, "neutral"),
        ("computation", "The average of the bases is $(5 + 9)/2 = 7$.", 0.3, "essential"),
        ("other", "Wait, is the height perpendicular? Yes, height means perpendicular distance.", 0.0, "redundant"),
        ("computation", "Multiplying by the height, the area is $7 \\times 3 = 21$.\n\nFinal answer: $\\boxed{21}$",
         0.45, "essential"),
    ], after="The area is $21$.\n\n**Final Answer**: $\\boxed{21}$"),
]
ESSENTIAL_MATH = {"geo-1": ["\\sqrt{100} = 10", "r = \\frac{6 + 8 - 10}{2} = 2"],
                  "alg-1": ["$3x = 15$", "x = 15 / 3 = 5"], "geo-2": ["(5 + 9)/2 = 7", "7 \\times 3 = 21"]}


def test_hand_written_traces_in_another_template():
    import copy

    recs = copy.deepcopy(HAND)
    long_ex, short_ex, stats = synthesize(recs, count_tokens=lambda t: len(t.split()))
    dialogues = _by_dialogue(long_ex, short_ex)
    assert stats["dialogues"] == 3 and stats["long_turns_with_final_answer"] == 0
    for r in recs:
        exs = dialogues[r["id"]]
        _check_dialogue(exs)
        long_text = "\n".join(e["completion"] for e in exs if e["role"] == "long")
        assert "\\boxed" not in long_text and "answer" not in long_text.lower()
        for math in ESSENTIAL_MATH[r["id"]]:
            assert math in long_text, (r["id"], math)
        assert extract_boxed(exs[-1]["completion"]) == r["answer"]
        assert "Let me reconsider" not in long_text and "Sanity check" not in long_text
        assert "Plugging back in" not in long_text
    alg = dialogues["alg-1"]
    assert [e["role"] for e in alg] == ["long", "short", "long", "short"]
    assert "15 is divisible by 3" in alg[1]["completion"] and alg[1]["completion"].endswith("</rethink>")
    # geo-1 opens with a short-assigned restatement: compressed into the first long turn
    geo = dialogues["geo-1"][0]["completion"]
    assert geo.startswith("<think>\nWe want the inradius") and stats["flags"]["opening_compressed"] == 2
    assert stats["short_compression"] < 1


def test_planted_shares_with_truth_scores_and_chunker_boundaries():
    """Scores from the planted truth (essential +, others <= 0): with gold boundaries every
    essential thought goes long and every redundant one short. With a chunker's boundaries (a
    chunk holding an essential step scored +, one of mostly redundant steps -) every essential
    thought still goes long, and every redundant thought goes short unless the chunker put it
    in one chunk with an essential step (that bound is the chunker's, not the assignment's);
    with the default `segment` chunker both shares stay >= 0.8."""
    _, _, gold = synthesize(_scored(24, seed=7))
    assert gold["planted"]["essential_long_share"] == 1.0 and gold["planted"]["redundant_short_share"] == 1.0
    cfg = ColdStartConfig(require_correct=False)  # planted traces are right by construction
    for method in ("segment", "heuristic"):
        recs = chunk_records(generate(24, seed=7), ChunkConfig(method=method))
        reachable = redundant = 0
        for r in recs:
            kind_of = {k: g["kind"] for g in r["gold_thoughts"] for k in range(g["start"], g["end"] + 1)}
            mixed = set()  # steps in a chunk that holds an essential step
            for t in r["thoughts"]:
                kinds = [kind_of[k] for k in range(t["start"], t["end"] + 1)]
                # a chunk holding a needed computation gains accuracy; one of mostly re-checks loses
                t["e"] = 0.4 if "essential" in kinds else (-0.2 if 2 * kinds.count("redundant") > len(kinds) else 0.0)
                t["score"] = t["e"] * 0.8
                if "essential" in kinds:
                    mixed.update(range(t["start"], t["end"] + 1))
            for g in r["gold_thoughts"]:
                if g["kind"] == "redundant":
                    redundant += 1
                    steps = range(g["start"], g["end"] + 1)
                    reachable += 2 * sum(k in mixed for k in steps) <= len(steps)
        long_ex, short_ex, st = synthesize(recs, cfg)
        assert st["planted"]["essential_long_share"] == 1.0, (method, st["planted"])
        assert st["planted"]["redundant_short_share"] == pytest.approx(reachable / redundant, abs=1e-4)
        if method == "segment":
            assert st["planted"]["redundant_short_share"] >= 0.8, st["planted"]
        assert st["long_turns_with_final_answer"] == 0 and st["short_compression"] < 1
        for exs in _by_dialogue(long_ex, short_ex).values():
            _check_dialogue(exs)
