"""Tests for the collaborative solver.

Loop logic (turn order, ending rules, max_turns, flags, token accounting, batching per role) is
checked exactly with `ScriptedEngine`, an engine defined here that plays scripted model outputs
while behaving like a real engine towards the solver: it honours stop strings (cuts the text at
the earliest one and reports it) and `max_new_tokens` (finish_reason "length"), and counts
tokens with its own tokenizer. The real tiny-random HFEngine runs the same loop in
`test_real_tiny_random_pair*`; the embedded SmolLM2 pair runs end to end in the slow test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from longshort.dialogue import protocol as P
from longshort.dialogue.collab import CollabConfig, iter_solve, record_id, solve_problems
from longshort.engines.base import Completion, Engine, GenerationRequest, GenerationResult
from longshort.errors import InputError


def words(text: str) -> list[str]:
    return text.split()


class ScriptedEngine(Engine):
    """Plays `scripts[record_id][turn_index]` as the model's output for that turn.

    Tokens: whitespace words by default (or `tokenize`), a stop string counts as one token.
    Every `generate` call is recorded in `calls` as [(record id, turn, prefix, params), ...].
    """

    name = "scripted"

    def __init__(self, scripts: dict[str, list[str]], tokenize: Callable[[str], list[str]] = words):
        self.scripts = scripts
        self.tokenize = tokenize
        self.calls: list[list[tuple[str, int, str, object]]] = []
        self.prompt_tokens_given = 0

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False
                 ) -> list[GenerationResult]:
        self.calls.append([(r.meta["id"], r.meta["turn"], r.assistant_prefix, r.params) for r in requests])
        out = []
        for r in requests:
            script = self.scripts[r.meta["id"]][r.meta["turn"]]
            cut, stop = len(script), None
            for s in r.params.stop:
                pos = script.find(s)
                if pos != -1 and pos < cut:
                    cut, stop = pos, s
            toks = self.tokenize(script[:cut])
            if len(toks) + (stop is not None) > r.params.max_new_tokens:
                text = " ".join(toks[: r.params.max_new_tokens])
                comp = Completion(text=text, num_tokens=r.params.max_new_tokens, finish_reason="length")
            else:
                comp = Completion(text=script[:cut], num_tokens=len(toks) + (stop is not None),
                                  finish_reason="stop", stop=stop)
            prompt = " ".join(m["content"] for m in r.messages) + " " + r.assistant_prefix
            ptoks = self.count_tokens(prompt)
            self.prompt_tokens_given += ptoks
            out.append(GenerationResult(completions=[comp], prompt_tokens=ptoks, request=r))
        return out


def problems(*ids: str) -> list[dict]:
    return [{"id": i, "problem": f"What is problem {i}?", "answer": "5"} for i in ids]


CFG = CollabConfig(max_turns=3, max_new_tokens_long=20, max_new_tokens_short=10, temperature=0.0)


def test_turn_order_batching_ending_rules_and_token_accounting():
    scripts = {
        # finishes on the first short turn; trailing text after </answer> is never generated
        "a": ["\nplan: add two and three\n</think> ignored", "\n2 + 3 = 5 \\boxed{5}\n</answer> junk"],
        # hands back once, then finishes
        "b": [" hard step </think>", " not sure </rethink>", " redo it: 5 </think>", " \\boxed{5} </answer>"],
        # the first long turn hits its token limit: with long_limit="stop" the dialogue ends there
        "c": [" " + "word " * 30],
    }
    eng = ScriptedEngine(scripts)
    stop = CFG.model_copy(update={"long_limit": "stop"})
    recs = {r["id"]: r for r in iter_solve(problems("a", "b", "c"), long_engine=eng, config=stop)}

    # One generate call per role step, holding every dialogue waiting on that role.
    assert [[c[0] for c in call] for call in eng.calls] == [["a", "b", "c"], ["a", "b"], ["b"], ["b"]]
    # Long turns stop at </think> (and the partner's opening tag); short turns at their closes.
    assert eng.calls[0][0][3].stop == ["</think>", "<answer>"]
    assert eng.calls[1][0][3].stop == ["</rethink>", "</answer>", "<think>"]
    assert eng.calls[0][0][3].max_new_tokens == 20 and eng.calls[1][0][3].max_new_tokens == 10
    # The opening tag is forced through the assistant prefix; the prefix is the transcript.
    assert eng.calls[0][0][2] == "<think>"
    a_long = "<think>\nplan: add two and three\n</think>"
    assert eng.calls[1][0][2] == a_long + "\n<answer>"

    a = recs["a"]
    assert [t["text"] for t in a["turns"]] == [a_long, "<answer>\n2 + 3 = 5 \\boxed{5}\n</answer>"]
    assert a["finished"] and a["end_reason"] == "answer" and a["final_answer"] == "5"
    assert a["flags"] == [] and all(t["flags"] == [] for t in a["turns"])
    # Generated tokens: the engine's count (stop included, forced tag excluded).
    assert [t["tokens"] for t in a["turns"]] == [6, 7]
    assert a["tokens"] == {"long": 6, "short": 7, "total": 13}
    assert a["num_turns"] == 2 and a["answer"] == "5" and a["problem_id"] == "a" and a["sample"] == 0

    b = recs["b"]
    assert [t["role"] for t in b["turns"]] == ["long", "short", "long", "short"]
    assert b["turns"][1]["text"] == "<answer> not sure </rethink>"
    assert b["finished"] and b["tokens"] == {"long": 7, "short": 5, "total": 12}

    c = recs["c"]
    assert c["num_turns"] == 1 and c["end_reason"] == "token_limit" and not c["finished"]
    assert c["turns"][0]["tokens"] == 20 and c["turns"][0]["finish_reason"] == "length"
    assert c["turns"][0]["flags"] == [P.FLAG_MISSING_CLOSE, P.FLAG_TRUNCATED]
    assert c["flags"] == ["token_limit", "no_final_answer", "no_boxed_answer"]
    # Prompt tokens are reported per role, apart from generated tokens.
    total_prompt = sum(r["prompt_tokens"]["long"] + r["prompt_tokens"]["short"] for r in recs.values())
    assert total_prompt == eng.prompt_tokens_given
    assert c["prompt_tokens"]["short"] == 0 and c["prompt_tokens"]["long"] > 0
    # Records come out as dialogues finish: c (first step), a (second), b (last).
    assert list(recs) == ["c", "a", "b"]


def test_one_engine_for_both_roles_batches_long_and_short_turns_together():
    scripts = {"c": [" " + "word " * 30],  # ends at its first long turn: b joins while a is on short
               "a": [" plan </think>", " \\boxed{5} </answer>"],
               "b": [" step </think>", " \\boxed{5} </answer>"]}
    cfg = CFG.model_copy(update={"long_limit": "stop", "max_active": 2})
    eng = ScriptedEngine(scripts)
    one = {r["id"]: r for r in iter_solve(problems("c", "a", "b"), long_engine=eng, short_engine=eng, config=cfg)}
    assert [[(c[0], c[1]) for c in call] for call in eng.calls] == [[("c", 0), ("a", 0)], [("a", 1), ("b", 0)],
                                                                    [("b", 1)]]
    # the mixed call gives each turn its own role's limit and stops
    (_, _, _, short_p), (_, _, _, long_p) = eng.calls[1]
    assert (short_p.max_new_tokens, long_p.max_new_tokens) == (10, 20) and "</answer>" in short_p.stop
    # two engines (two models): one call per engine, and the same dialogues
    long_eng, short_eng = ScriptedEngine(scripts), ScriptedEngine(scripts)
    two = {r["id"]: r for r in iter_solve(problems("c", "a", "b"), long_engine=long_eng, short_engine=short_eng,
                                          config=cfg)}
    assert [[c[0] for c in call] for call in long_eng.calls] == [["c", "a"], ["b"]]
    assert [[c[0] for c in call] for call in short_eng.calls] == [["a"], ["b"]]
    assert {k: r["turns"] for k, r in one.items()} == {k: r["turns"] for k, r in two.items()}


def test_a_long_turn_cut_at_its_limit_hands_back_by_default():
    scripts = {"c": [" " + "word " * 30, " so 5 \\boxed{5} </answer>"],
               "d": [" ok </think>", " " + "word " * 30]}  # a short turn at its limit still ends the dialogue
    eng = ScriptedEngine(scripts)
    recs = {r["id"]: r for r in iter_solve(problems("c", "d"), long_engine=eng, config=CFG)}
    c, d = recs["c"], recs["d"]
    assert [t["role"] for t in c["turns"]] == ["long", "short"] and c["end_reason"] == "answer"
    assert c["turns"][0]["text"].endswith("</think>") and P.FLAG_TRUNCATED in c["turns"][0]["flags"]
    assert c["finished"] and c["final_answer"] == "5" and "token_limit" not in c["flags"]
    assert d["end_reason"] == "token_limit" and not d["finished"] and d["num_turns"] == 2


def test_max_turns_and_grading_on_last_boxed_seen():
    scripts = {"m": [" maybe \\boxed{4} </think>", " hmm </rethink>", " again </think>", " still </rethink>",
                     " never asked </think>"]}
    eng = ScriptedEngine(scripts)
    [rec] = solve_problems(problems("m"), long_engine=eng, config=CFG.model_copy(update={"max_turns": 2}))
    assert [t["role"] for t in rec["turns"]] == ["long", "short", "long", "short"]
    assert rec["end_reason"] == "max_turns" and not rec["finished"]
    assert rec["final_answer"] == "4"  # last boxed answer seen, here in a long turn
    assert rec["flags"] == ["max_turns", "no_final_answer"]


def test_format_repairs_are_flagged_without_forced_tags():
    scripts = {"f": ["no tags here</think>", "<think>wrong role \\boxed{5}"]}
    eng = ScriptedEngine(scripts)
    cfg = CFG.model_copy(update={"force_open_tag": False})
    [rec] = solve_problems(problems("f"), long_engine=eng, config=cfg)
    assert eng.calls[0][0][2] == ""  # nothing forced
    assert rec["turns"][0]["text"] == "<think>no tags here</think>"
    assert rec["turns"][0]["flags"] == [P.FLAG_MISSING_OPEN]
    # The short model opened with <think> and ended (EOS) after a boxed answer: repaired to a final turn.
    assert rec["turns"][1]["text"] == "<answer>wrong role \\boxed{5}</answer>"
    assert rec["turns"][1]["flags"] == [P.FLAG_WRONG_TAG, P.FLAG_MISSING_CLOSE]
    assert rec["finished"] and rec["flags"] == ["format_violation"]


def test_short_turn_hitting_limit_ends_dialogue():
    scripts = {"s": [" ok </think>", " " + "x " * 11 + "\\boxed{5} </answer>"]}
    [rec] = solve_problems(problems("s"), long_engine=ScriptedEngine(scripts), config=CFG)
    assert rec["end_reason"] == "token_limit" and not rec["finished"]
    assert rec["turns"][1]["text"].endswith("</rethink>") and rec["turns"][1]["tokens"] == 10
    assert rec["final_answer"] is None


def test_separate_engines_count_their_own_tokens():
    scripts = {"d": [" think hard </think>", " so \\boxed{5} </answer>"]}
    long_eng = ScriptedEngine(scripts)
    short_eng = ScriptedEngine(scripts, tokenize=list)  # a "character" tokenizer
    [rec] = solve_problems(problems("d"), long_engine=long_eng, short_engine=short_eng, config=CFG.model_copy(
        update={"max_new_tokens_short": 100}))
    assert len(long_eng.calls) == 1 and len(short_eng.calls) == 1
    assert rec["tokens"]["long"] == 3  # 2 words + the stop
    assert rec["tokens"]["short"] == len(" so \\boxed{5} ") + 1
    assert rec["prompt_tokens"] == {"long": long_eng.prompt_tokens_given, "short": short_eng.prompt_tokens_given}


@pytest.mark.parametrize("mode", ["long", "short"])
def test_solo_modes_are_one_turn_dialogues(mode):
    scripts = {"x": ["\nsteps\n</think>\nThe answer is \\boxed{5}." if mode == "long" else " \\boxed{5} </answer>"]}
    long_eng, short_eng = ScriptedEngine(scripts), ScriptedEngine(scripts)
    cfg = CFG.model_copy(update={"max_new_tokens_long": 4, "max_new_tokens_short": 3, "max_turns": 2})
    [rec] = solve_problems(problems("x"), long_engine=long_eng, short_engine=short_eng, config=cfg, mode=mode)
    used, unused = (long_eng, short_eng) if mode == "long" else (short_eng, long_eng)
    assert len(used.calls) == 1 and unused.calls == []
    params = used.calls[0][0][3]
    assert params.max_new_tokens == 2 * (4 + 3)  # solo budget = the whole dialogue's budget
    assert params.stop == ([] if mode == "long" else ["</rethink>", "</answer>"])
    assert rec["mode"] == mode and rec["num_turns"] == 1 and rec["finished"]
    assert rec["turns"][0]["role"] == mode and rec["final_answer"] == "5" and rec["flags"] == []
    assert rec["tokens"]["total"] == rec["tokens"][mode] > 0


def test_samples_ids_seeds_and_skip():
    scripts = {f"q#{k}": [" a </think>", " \\boxed{5} </answer>"] for k in range(3)}
    eng = ScriptedEngine(scripts)
    cfg = CFG.model_copy(update={"samples": 3, "seed": 7})
    recs = list(iter_solve(problems("q"), long_engine=eng, config=cfg, skip_ids={"q#1"}))
    assert sorted(r["id"] for r in recs) == ["q#0", "q#2"]
    assert sorted(r["sample"] for r in recs) == [0, 2] and {r["problem_id"] for r in recs} == {"q"}
    seeds = [c[3].seed for call in eng.calls for c in call]
    assert len(set(seeds)) == len(seeds) == 4  # per sample and per turn
    # Seeds depend only on (seed, record id, turn): a second run gives the same ones.
    eng2 = ScriptedEngine(scripts)
    list(iter_solve(problems("q"), long_engine=eng2, config=cfg, skip_ids={"q#1"}))
    assert [c[3].seed for call in eng2.calls for c in call] == seeds
    assert record_id("q", 0, 1) == "q" and record_id("q", 2, 3) == "q#2"


def test_max_active_bounds_the_batch():
    scripts = {i: [" a </think>", " \\boxed{5} </answer>"] for i in "abc"}
    eng = ScriptedEngine(scripts)
    recs = solve_problems(problems("a", "b", "c"), long_engine=eng, config=CFG.model_copy(update={"max_active": 1}))
    assert [len(call) for call in eng.calls] == [1] * 6
    assert [r["id"] for r in recs] == ["a", "b", "c"]


def test_bad_problems_fail_before_any_generation():
    eng = ScriptedEngine({})
    with pytest.raises(InputError, match="problem"):
        solve_problems([{"id": "a", "problem": "ok"}, {"id": "b", "problem": "  "}], long_engine=eng)
    with pytest.raises(InputError, match="duplicate"):
        solve_problems([{"id": "a", "problem": "x"}, {"id": "a", "problem": "y"}], long_engine=eng)
    assert eng.calls == []
    with pytest.raises(ValueError):
        CollabConfig(max_turns=0)
    with pytest.raises(ValueError):
        CollabConfig(unknown_field=1)


# ----------------------------------------------------------------------------- real engines


@pytest.fixture(scope="module")
def tiny_engines():
    from longshort.engines import make_engine

    return make_engine("tiny-random"), make_engine("tiny-random-bytes")


def _check_record_invariants(rec: dict, cfg: CollabConfig) -> None:
    for t in rec["turns"]:
        assert P.is_valid_turn(t["role"], t["text"])
        limit = cfg.max_new_tokens_long if t["role"] == "long" else cfg.max_new_tokens_short
        assert 0 < t["tokens"] <= limit
        assert (t["finish_reason"] == "length") == (P.FLAG_TRUNCATED in t["flags"])
    for role in ("long", "short"):
        assert rec["tokens"][role] == sum(t["tokens"] for t in rec["turns"] if t["role"] == role)
        assert (rec["prompt_tokens"][role] > 0) == any(t["role"] == role for t in rec["turns"])
    assert rec["tokens"]["total"] == rec["tokens"]["long"] + rec["tokens"]["short"]
    json.dumps(rec)  # JSONL-serialisable


def test_real_tiny_random_pair_with_different_tokenizers(tiny_engines):
    long_eng, short_eng = tiny_engines
    cfg = CollabConfig(max_turns=2, max_new_tokens_long=6, max_new_tokens_short=5, temperature=0.8, seed=3)
    probs = problems("r1", "r2", "r3")
    recs = solve_problems(probs, long_engine=long_eng, short_engine=short_eng, config=cfg)
    assert [r["id"] for r in recs] == ["r1", "r2", "r3"]
    for rec in recs:
        _check_record_invariants(rec, cfg)
        assert rec["turns"][0]["role"] == "long" and rec["turns"][0]["text"].startswith("<think>")
    # Same seeds → same records, whatever the batch: one at a time gives identical dialogues.
    one_by_one = [solve_problems([p], long_engine=long_eng, short_engine=short_eng, config=cfg)[0] for p in probs]
    assert [r["turns"] for r in one_by_one] == [r["turns"] for r in recs]


def test_scripted_long_with_real_byte_tokenizer_short(tiny_engines):
    """Multi-turn with a real engine on the short side (a random model never closes a long turn)."""
    _, short_eng = tiny_engines
    long_eng = ScriptedEngine({"m1": [" step one </think>"], "m2": [" step two </think>"]})
    cfg = CollabConfig(max_turns=2, max_new_tokens_long=8, max_new_tokens_short=6, temperature=0.0)
    recs = solve_problems(problems("m1", "m2"), long_engine=long_eng, short_engine=short_eng, config=cfg)
    for rec in recs:
        _check_record_invariants(rec, cfg)
        assert [t["role"] for t in rec["turns"]][:2] == ["long", "short"]
        # The short model's prompt: its system prompt + question, continuing the transcript, counted
        # by its own (byte-level) tokenizer.
        expected = 0
        for i, t in enumerate(rec["turns"]):
            if t["role"] == "short":
                messages, prefix = P.render_input("short", rec["problem"], rec["turns"][:i], open_tag=True)
                req = GenerationRequest(messages=messages, assistant_prefix=prefix)
                expected += short_eng.count_tokens(short_eng.render(req))
        assert rec["prompt_tokens"]["short"] == expected
        assert rec["turns"][1]["tokens"] <= 6
    assert long_eng.calls[0] and len(long_eng.calls[0]) == 2


def test_real_tiny_random_solo_short(tiny_engines):
    _, short_eng = tiny_engines
    cfg = CollabConfig(solo_max_new_tokens=7, temperature=0.0)
    [rec] = solve_problems(problems("s1"), short_engine=short_eng, config=cfg, mode="short")
    assert rec["mode"] == "short" and rec["num_turns"] == 1 and rec["turns"][0]["role"] == "short"
    assert rec["turns"][0]["text"].startswith("<answer>") and rec["turns"][0]["text"].endswith("</answer>")
    assert 0 < rec["tokens"]["short"] <= 7 and rec["tokens"]["long"] == 0


@pytest.mark.slow
def test_smollm2_pair_end_to_end_on_gsm8k(shared_dir: Path):
    from longshort.engines import make_engine
    from longshort.io import read_jsonl

    probs = read_jsonl(shared_dir / "benchmarks" / "gsm8k_test.jsonl")[:2]
    eng = make_engine("smollm2-135m")
    cfg = CollabConfig(max_turns=2, max_new_tokens_long=32, max_new_tokens_short=16, temperature=0.0)
    recs = solve_problems(probs, long_engine=eng, short_engine=eng, config=cfg)
    assert [r["id"] for r in recs] == [p["id"] for p in probs]
    for rec in recs:
        _check_record_invariants(rec, cfg)
        assert rec["answer"] == next(p["answer"] for p in probs if p["id"] == rec["id"])
        assert rec["end_reason"] in {"answer", "max_turns", "token_limit"}
        # The model writes English here, not random tokens.
        assert sum(ch.isalpha() for ch in rec["turns"][0]["text"]) > 20
