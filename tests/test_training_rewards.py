"""Reward functions of the RL stage on hand-made dialogues (real math-verify grading)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from longshort.dialogue.protocol import parse_turn
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
