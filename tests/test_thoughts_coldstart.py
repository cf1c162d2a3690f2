"""Cold-start synthesis: role assignment, compressors, dialogue structure, SFT format, stats."""

from __future__ import annotations

import pytest

from longshort.dialogue.protocol import extract_boxed, is_valid_turn, render_input
from longshort.engines.base import Completion, Engine, GenerationResult
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.coldstart import (
    ColdStartConfig,
    assign_roles,
    compress_thought,
    extract_math,
    synthesize,
)
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
        elif k == len(turns) - 1:
            assert text.endswith("</answer>") and extract_boxed(text) is not None
        else:
            assert text.endswith("</rethink>")


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


def test_assignment_threshold_ratio_and_first_long():
    th = [{"score": s} for s in (0.0, 0.5, -0.1, 0.2, None, 0.05)]
    assert assign_roles(th)[0] == ["long", "long", "short", "long", "short", "long"]
    assert assign_roles(th)[1] == ["first_forced_long"]
    roles, _ = assign_roles(th, ColdStartConfig(threshold=0.1))
    assert roles == ["long", "long", "short", "long", "short", "short"]
    roles, _ = assign_roles(th, ColdStartConfig(ratio=0.2))  # ceil(1.2) = 2 thoughts: 0.5 and 0.2
    assert roles == ["long", "long", "short", "long", "short", "short"]
    roles, flags = assign_roles(th, ColdStartConfig(ratio=0.2, first_long=False))
    assert roles[0] == "short" and flags == []


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


def test_final_long_turn_gets_a_short_final_turn():
    rec = _scored(1, seed=2)[0]
    for t in rec["thoughts"]:
        t["score"] = 0.3  # everything is important
    long_ex, short_ex, stats = synthesize([rec])
    assert len(long_ex) == 1 and len(short_ex) == 1
    assert short_ex[0]["final"] and short_ex[0]["completion"].endswith("</answer>")
    assert extract_boxed(short_ex[0]["completion"]) == rec["answer"]
    assert stats["flags"] == {"final_short_turn_added": 1}


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
