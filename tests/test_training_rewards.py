"""Reward functions of the RL stage on hand-made dialogues (real math-verify grading)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from longshort.dialogue.protocol import (
    ANSWER_CLOSE,
    FLAG_MISSING_CLOSE,
    FLAG_TRUNCATED,
    committed_answer,
    extract_boxed,
    parse_turn,
    render_transcript,
)
from longshort.evaluation.grading import grade
from longshort.training import rewards as R


def _dialogue(*turns):
    """Turn dicts as the rollout returns them, parsed by the real protocol parser."""
    return [parse_turn(role, raw, stop=stop, finish_reason=fin).to_dict() | {"tokens": n}
            for role, raw, stop, fin, n in turns]


RIGHT_CLEAN = _dialogue(("long", "<think>half of 1 is 1/2", "</think>", "stop", 40),
                        ("short", "<answer>so \\boxed{\\frac{1}{2}}", "</answer>", "stop", 10))
WRONG_CLEAN = _dialogue(("long", "<think>hmm", "</think>", "stop", 20),
                        ("short", "<answer>\\boxed{3}", "</answer>", "stop", 5))
RIGHT_MESSY = _dialogue(("long", "no tags here", None, "stop", 300),  # missing both tags
                        ("short", "<answer>0.5 \\boxed{0.5}", "</answer>", "stop", 8))


def test_doctests_pass():
    result = doctest.testmod(R)
    assert result.attempted >= 5 and result.failed == 0


def test_correctness_on_dialogues():
    finals = ["\\frac{1}{2}", "3", "0.5", None]
    got = R.correctness_reward(["", "", "", ""], answer=["1/2"] * 4, final_answer=finals)
    assert got == [1.0, 0.0, 1.0, 0.0]
    # Without final_answer: graded on the completion's text (last boxed answer).
    assert R.correctness_reward(["<answer>x \\boxed{12}</answer>", "<answer>\\boxed{13}</answer>"],
                                answer=["12", "12"]) == [1.0, 0.0]
    # Multiple choice by letter.
    assert R.correctness_reward([""], answer=["B"], final_answer=["B"], choices=[["1", "2", "3", "4"]]) == [1.0]


def test_correctness_needs_gold_answer():
    with pytest.raises(ValueError, match="answer"):
        R.correctness_reward(["\\boxed{1}"])


def test_correctness_pays_only_the_committed_short_answer():
    long_box = _dialogue(("long", "<think>1/2, so \\boxed{1/2}", "</think>", "stop", 30))
    long_box_then_handback = long_box + _dialogue(("short", "<answer>not sure", "</rethink>", "stop", 5))
    cut_final = long_box + _dialogue(("short", "<answer>so \\boxed{1/2}", None, "length", 64))
    unclosed_final = long_box + _dialogue(("short", "<answer>so \\boxed{1/2}", None, "stop", 9))
    cases = [RIGHT_CLEAN, long_box, long_box_then_handback, cut_final, unclosed_final]
    got = R.correctness_reward([""] * 5, answer=["1/2"] * 5, turns=cases)
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0]
    # the rollout's own committed answers give the same, and turns win over a leaky last-box answer
    finals = [committed_answer(d) for d in cases]
    assert R.correctness_reward([""] * 5, answer=["1/2"] * 5, final_answer=finals) == got
    assert R.correctness_reward([""] * 5, answer=["1/2"] * 5, final_answer=["1/2"] * 5, turns=cases) == got
    # a dialogue flagged truncated, or ended at max_turns, earns nothing even with a clean final turn
    assert R.correctness_reward(["", ""], answer=["1/2"] * 2, turns=[RIGHT_CLEAN] * 2, truncated=[True, False],
                                end_reason=[None, "max_turns"]) == [0.0, 0.0]
    # text only: the box must be in a whole short <answer>...</answer> turn at the end
    texts = [render_transcript(d) for d in cases]
    assert R.correctness_reward(texts[:3], answer=["1/2"] * 3) == [1.0, 0.0, 0.0]
    assert R.length_reward([""] * 5, answer=["1/2"] * 5, turns=cases, dialogue_tokens=[10] * 5, budget=100) == [
        0.9, 0.0, 0.0, 0.0, 0.0]


_BODIES = st.sampled_from(["", "work it out: 3 + 4 = 7.", "so \\boxed{7}", "so \\boxed{8}",
                           "maybe \\boxed{7} or \\boxed{9}", "cut \\boxed{7", "7"])
_TURN = st.tuples(st.sampled_from(["long", "short"]), st.booleans(), _BODIES,
                  st.sampled_from([None, "</think>", "</rethink>", "</answer>", "<think>"]),
                  st.sampled_from(["stop", "stop", "length"]), st.integers(0, 500))


def _random_dialogue(spec):
    turns = []
    for role, opened, body, stop, finish, n in spec:
        raw = ("<think>" if role == "long" else "<answer>") + body if opened else body
        turns.append(parse_turn(role, raw, stop=stop if stop != "<think>" else None, finish_reason=finish,
                                tokens=n).to_dict())
        if stop == "<think>":  # text after the turn: the parser discards it
            turns[-1] = parse_turn(role, raw + "<think>more", finish_reason=finish, tokens=n).to_dict()
    return turns


# endings that make a committed answer likely (random turns alone rarely close cleanly)
_ENDINGS = st.sampled_from([None, ("short", True, "so \\boxed{7}", "</answer>", "stop", 9),
                            ("short", True, "so \\boxed{8}", "</answer>", "stop", 9),
                            ("short", True, "so \\boxed{7}", None, "length", 9),
                            ("long", True, "so \\boxed{7}", "</think>", "stop", 9)])


@settings(max_examples=250, deadline=None)
@given(spec=st.lists(_TURN, min_size=1, max_size=6), ending=_ENDINGS, truncated=st.sampled_from([False, False, True]))
def test_property_correctness_implies_a_finished_short_answer_turn(spec, ending, truncated):
    turns = _random_dialogue(spec + ([ending] if ending else []))
    gold = "7"
    kwargs = {"answer": [gold], "truncated": [truncated]}
    by_turns = R.correctness_reward([""], turns=[turns], **kwargs)[0]
    by_final = R.correctness_reward([""], final_answer=[committed_answer(turns)], **kwargs)[0]
    assert by_turns == by_final  # the rollout's path (final_answer = committed_answer) agrees
    last = turns[-1]
    if by_turns > 0:
        assert not truncated
        assert last["role"] == "short" and last["final"] and last["finish_reason"] == "stop"
        assert last["text"].endswith(ANSWER_CLOSE)
        assert FLAG_MISSING_CLOSE not in last["flags"] and FLAG_TRUNCATED not in last["flags"]
        assert grade(extract_boxed(last["text"]), gold)
    # a right box only in long turns never pays
    short_right = any(t["role"] == "short" and extract_boxed(t["text"]) == gold for t in turns)
    if not short_right:
        assert by_turns == 0.0
    # text only (no token-limit knowledge): still only a closing short turn's box pays
    text = render_transcript(turns)
    if R.correctness_reward([text], answer=[gold])[0] > 0:
        tail = text[text.rfind("<answer>"):]
        assert tail.endswith(ANSWER_CLOSE) and grade(extract_boxed(tail), gold)


@settings(max_examples=150, deadline=None)
@given(a=st.lists(_TURN, min_size=1, max_size=5), b=st.lists(_TURN, min_size=1, max_size=5), ea=_ENDINGS, eb=_ENDINGS,
       tok_a=st.integers(0, 5000), tok_b=st.integers(0, 5000), wf=st.floats(0, 0.99), wl=st.floats(0, 5),
       role=st.sampled_from(["long", "short"]), count=st.sampled_from(["dialogue", "role"]))
def test_property_total_reward_never_ranks_a_wrong_dialogue_above_a_right_one(a, b, ea, eb, tok_a, tok_b, wf, wl,
                                                                             role, count):
    cfg = R.RewardConfig(format_weight=wf, length_weight=wl, length_budget=1000, length_count=count)
    dialogues = [_random_dialogue(a + [ea] if ea else a), _random_dialogue(b + [eb] if eb else b)]
    kw = {"answer": ["7", "7"], "turns": dialogues, "trained_role": [role, role],
          "dialogue_tokens": [tok_a, tok_b], "role_tokens": [tok_a, tok_b]}
    parts = [f([""] * 2, **kw) for f in R.reward_functions(cfg)]
    totals = [sum(w * p[i] for w, p in zip(cfg.weights(), parts, strict=True)) for i in range(2)]
    right = parts[0]
    for i, j in ((0, 1), (1, 0)):
        if right[i] == 1.0 and right[j] == 0.0:
            assert totals[i] > totals[j]
    for i in range(2):  # the length bonus is paid only where correctness is
        assert parts[2][i] == 0.0 or right[i] == 1.0


def test_format_counts_only_trained_role_turns():
    turns = [RIGHT_CLEAN, RIGHT_MESSY]
    assert R.format_reward(["", ""], turns=turns, trained_role=["long", "long"]) == [1.0, 0.0]
    # The short role's turns are clean in both dialogues.
    assert R.format_reward(["", ""], turns=turns, trained_role=["short", "short"]) == [1.0, 1.0]
    # A role that never spoke gets 0.
    assert R.format_reward([""], turns=[RIGHT_CLEAN[:1]], trained_role="short") == [0.0]


def test_length_rewards_brevity_only_when_right():
    toks = [sum(t["tokens"] for t in d) for d in (RIGHT_CLEAN, WRONG_CLEAN, RIGHT_MESSY)]
    got = R.length_reward(["", "", ""], answer=["1/2"] * 3, final_answer=["\\frac{1}{2}", "3", "0.5"],
                          dialogue_tokens=toks, budget=400)
    assert got[1] == 0.0  # wrong, although the shortest
    assert got[0] == pytest.approx(1 - 50 / 400) and got[2] == pytest.approx(1 - 308 / 400)
    assert got[0] > got[2]  # same correctness, fewer tokens wins
    with pytest.raises(ValueError):
        R.length_reward([""], answer=["1"], final_answer=["1"])  # no token counts at all


def _total(cfg, right: bool, fmt: float, tokens: int) -> float:
    length = R.length_reward([""], answer=["7"], final_answer=["7" if right else "8"], dialogue_tokens=[tokens],
                             budget=cfg.length_budget)[0]
    c = 1.0 if right else 0.0
    return cfg.correctness_weight * c + cfg.format_weight * fmt + cfg.length_weight * length


@settings(max_examples=60, deadline=None)
@given(fmt_r=st.floats(0, 1), fmt_w=st.floats(0, 1), tok_r=st.integers(0, 10**5), tok_w=st.integers(0, 10**5),
       wf=st.floats(0, 0.99), wl=st.floats(0, 5))
def test_weighted_total_never_ranks_wrong_above_right(fmt_r, fmt_w, tok_r, tok_w, wf, wl):
    cfg = R.RewardConfig(correctness_weight=1.0, format_weight=wf, length_weight=wl, length_budget=1000)
    assert _total(cfg, True, fmt_r, tok_r) > _total(cfg, False, fmt_w, tok_w)


def test_config_rejects_weights_that_let_format_beat_correctness():
    with pytest.raises(ValidationError, match="must exceed"):
        R.RewardConfig(correctness_weight=0.5, format_weight=0.5)
    assert R.RewardConfig().weights() == [1.0, 0.2, 0.3]


def test_bound_reward_functions_use_config():
    cfg = R.RewardConfig(length_budget=100)
    names = [f.__name__ for f in R.reward_functions(cfg)]
    assert names == ["correctness", "format", "length"]
    length = R.reward_functions(cfg)[2]
    assert length([""], answer=["2"], final_answer=["2"], dialogue_tokens=[50]) == [0.5]
