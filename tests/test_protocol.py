"""Tests for the dialogue protocol: rendering, parsing/repair, boxed extraction (with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longshort.dialogue import protocol as P
from longshort.dialogue.protocol import (
    FORMAT_FLAGS,
    STOP_STRINGS,
    TAGS,
    Turn,
    extract_boxed,
    format_turn,
    is_valid_turn,
    parse_solo,
    parse_transcript,
    parse_turn,
    render_input,
    render_transcript,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

roles = st.sampled_from(["long", "short"])
# Text that is likely to contain tags, tag fragments, braces and boxes in odd places.
pieces = st.one_of(
    st.sampled_from(list(TAGS) + ["\\boxed{", "\\fbox{", "{", "}", "\n", " ", "<", "</th", "<ans",
                                  "</re", ">", "x", "42", "Wait,"]),
    st.text(max_size=6),
)
raw_texts = st.lists(pieces, max_size=25).map("".join)
# Bodies that a model could legitimately write: no protocol tags.
bodies = raw_texts.filter(lambda s: not any(t in s for t in TAGS))


def _balanced():
    return st.recursive(
        st.text(alphabet="abc123+-*/^ \\", max_size=5),
        lambda inner: st.tuples(inner, inner, inner).map(lambda t: f"{t[0]}{{{t[1]}}}{t[2]}"),
        max_leaves=10,
    )


# ----------------------------------------------------------------------------- parse / repair


@SETTINGS
@given(role=roles, raw=raw_texts, finish=st.sampled_from(["stop", "length"]), data=st.data())
def test_repair_always_gives_a_valid_turn(role, raw, finish, data):
    stop = data.draw(st.sampled_from([None] + STOP_STRINGS[role] + P.PARTNER_STOPS[role]))
    turn = parse_turn(role, raw, stop=stop, finish_reason=finish)
    assert is_valid_turn(role, turn.text), turn.text
    assert turn.final == turn.text.endswith(P.ANSWER_CLOSE)
    assert len(turn.flags) == len(set(turn.flags))
    # Parsing a repaired turn again changes nothing and needs no repair.
    again = parse_turn(role, turn.text)
    assert again.text == turn.text
    assert not set(again.flags) & FORMAT_FLAGS
    if finish == "length":
        assert P.FLAG_TRUNCATED in turn.flags
        if stop is None and P.ANSWER_CLOSE not in raw:
            assert not turn.final  # a cut-off answer is never taken as final


@SETTINGS
@given(role=roles, body=bodies, final=st.booleans())
def test_format_then_parse_round_trips(role, body, final):
    final = final and role == "short"
    text = format_turn(role, body, final=final)
    turn = parse_turn(role, text)
    assert turn.text == text and turn.body == body and turn.final == final
    assert not set(turn.flags) & FORMAT_FLAGS
    # The engine cuts the stop string off; parse_turn puts it back.
    close = P.CLOSE_TAGS[role][-1] if final else P.CLOSE_TAGS[role][0]
    assert parse_turn(role, text[:-len(close)], stop=close).text == text


@SETTINGS
@given(turns=st.lists(st.tuples(roles, bodies, st.booleans()), max_size=6))
def test_render_transcript_then_parse_round_trips(turns):
    texts = [format_turn(r, b, final=f and r == "short") for r, b, f in turns]
    parsed = parse_transcript(render_transcript(texts))
    assert [t.text for t in parsed] == texts
    assert [t.role for t in parsed] == [r for r, _, _ in turns]


@SETTINGS
@given(role=roles, question=st.text(min_size=1, max_size=30),
       turns=st.lists(st.tuples(roles, bodies), max_size=4), extra=st.tuples(roles, bodies))
def test_render_input_prefix_grows_monotonically(role, question, turns, extra):
    texts = [format_turn(r, b) for r, b in turns]
    msgs, prefix = render_input(role, question, texts)
    assert msgs == [{"role": "system", "content": P.SYSTEM_PROMPTS[role]},
                    {"role": "user", "content": question}]
    assert prefix == (render_transcript(texts) + "\n" if texts else "")
    _, longer = render_input(role, question, texts + [format_turn(*extra)])
    assert longer.startswith(prefix)  # prefix caching / on-policy RL rely on this
    _, forced = render_input(role, question, texts, open_tag=True)
    assert forced == prefix + P.OPEN_TAGS[role]


def test_specific_repairs_are_flagged():
    t = parse_turn("long", "Let me see.</think> trailing chatter")
    assert t.text == "<think>Let me see.</think>"
    assert t.flags == [P.FLAG_MISSING_OPEN, P.FLAG_TRAILING_TEXT]

    t = parse_turn("long", "<think>plan</answer>")
    assert t.text == "<think>plan</think>" and P.FLAG_WRONG_TAG in t.flags

    t = parse_turn("long", "<answer>I am short", stop=None)
    assert t.text == "<think>I am short</think>"
    assert t.flags == [P.FLAG_WRONG_TAG, P.FLAG_MISSING_CLOSE]

    t = parse_turn("long", "<think>idea <answer>", stop=None)  # started the partner's turn
    assert t.text == "<think>idea </think>" and P.FLAG_MISSING_CLOSE in t.flags

    t = parse_turn("short", "<answer>so \\boxed{7}", finish_reason="stop")  # EOS after a box
    assert t.text == "<answer>so \\boxed{7}</answer>" and t.final
    assert t.flags == [P.FLAG_MISSING_CLOSE]

    t = parse_turn("short", "<answer>so \\boxed{7", finish_reason="length")
    assert t.text.endswith(P.RETHINK_CLOSE) and not t.final
    assert t.flags == [P.FLAG_MISSING_CLOSE, P.FLAG_TRUNCATED]

    t = parse_turn("short", "<answer>done", stop="</answer>")
    assert t.final and t.flags == [P.FLAG_FINAL_WITHOUT_BOXED]

    t = parse_turn("short", "Sure! <answer>a <think> b</rethink>")  # partner's tag ends the turn
    assert t.text == "<answer>a </rethink>"
    assert t.flags == [P.FLAG_LEADING_TEXT, P.FLAG_MISSING_CLOSE, P.FLAG_TRAILING_TEXT]

    t = parse_turn("long", "<think>a <think>b", stop="</think>")
    assert t.text == "<think>a b</think>" and t.flags == [P.FLAG_STRAY_TAG]

    t = parse_turn("long", "<think>cut here </thi", finish_reason="length")
    assert t.text == "<think>cut here </think>"

    assert parse_turn("short", "<answer>  </rethink>").flags == [P.FLAG_EMPTY]


def test_solo_parsing():
    t = parse_solo("long", "<think>\n1+1 is 2\n</think>\nThe answer is \\boxed{2}.", tokens=9)
    assert t.flags == [] and t.final and t.boxed == "2" and t.tokens == 9
    t = parse_solo("long", "thinking without tags", finish_reason="length")
    assert t.text == "<think>thinking without tags</think>" and not t.final
    assert t.flags == [P.FLAG_MISSING_OPEN, P.FLAG_MISSING_CLOSE, P.FLAG_FINAL_WITHOUT_BOXED,
                       P.FLAG_TRUNCATED]
    t = parse_solo("short", "<answer>\\boxed{B}", stop="</rethink>")
    assert t.text == "<answer>\\boxed{B}</answer>" and t.final and t.flags == [P.FLAG_WRONG_TAG]


def test_turn_dict_round_trip():
    t = parse_turn("short", "<answer>x \\boxed{1}", stop="</answer>", tokens=5)
    assert Turn.from_dict(t.to_dict()) == t


def test_parse_transcript_rejects_garbage():
    with pytest.raises(ValueError):
        parse_transcript("<think>a</think><answer>b</answer>")  # no newline between turns
    with pytest.raises(ValueError):
        parse_transcript("<think>a <answer> b</think>")


def test_unknown_role_rejected():
    with pytest.raises(ValueError):
        render_input("medium", "q")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_turn("medium", "x")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- boxed answers


@SETTINGS
@given(content=_balanced(), before=st.text(alphabet="ab {} \n", max_size=8),
       after=st.text(alphabet="ab .\n", max_size=8), cmd=st.sampled_from(["\\boxed", "\\fbox"]))
def test_extract_boxed_matches_nested_braces(content, before, after, cmd):
    text = f"{before}{cmd}{{{content}}}{after}"
    assert extract_boxed(text) == content.strip()


@SETTINGS
@given(first=_balanced(), second=_balanced())
def test_extract_boxed_takes_the_last_complete_box(first, second):
    assert extract_boxed(f"\\boxed{{{first}}} then \\boxed{{{second}}}") == second.strip()
    # A last box cut off by the token limit falls back to the earlier complete one.
    assert extract_boxed(f"\\boxed{{{first}}} then \\boxed{{{second}") == first.strip()


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("answer \\boxed 5 done", "5"),
    ("\\boxed{}", ""),
    ("no box", None),
    ("\\boxed{unclosed", None),
    ("\\boxedx{3}", None),
    ("$\\fbox{A}$", "A"),
])
def test_extract_boxed_examples(text, expected):
    assert extract_boxed(text) == expected


def test_final_answer_is_last_boxed_seen():
    turns = [parse_turn("long", "<think>maybe \\boxed{3}</think>"),
             parse_turn("short", "<answer>check</rethink>"),
             parse_turn("long", "<think>no answer yet", finish_reason="length")]
    assert P.final_answer(turns) == "3"
    assert P.final_answer(turns[1:]) is None


def test_doctests_of_protocol():
    import doctest

    assert doctest.testmod(P).failed == 0


def test_committed_answer_only_from_a_finished_closing_short_turn():
    long_box = parse_turn("long", "<think>so \\boxed{8}", stop="</think>")
    done = parse_turn("short", "<answer>8 \\boxed{8}", stop="</answer>")
    assert P.committed_answer([long_box, done]) == "8"
    assert P.committed_answer([long_box.to_dict(), done.to_dict()]) == "8"  # the rollout's dicts
    assert P.final_answer([long_box]) == "8" and P.committed_answer([long_box]) is None
    # hand-back after a long box, a final turn cut at its limit, a close tag added by repair
    handback = parse_turn("short", "<answer>check", stop="</rethink>")
    cut = parse_turn("short", "<answer>so \\boxed{8}", finish_reason="length")
    repaired = parse_turn("short", "<answer>so \\boxed{8}")  # no close tag: </answer> is added, flagged
    assert repaired.text.endswith("</answer>") and "missing_close_tag" in repaired.flags
    for last in (handback, cut, repaired):
        assert P.committed_answer([long_box, last]) is None
    # a finished final turn before a later long turn (max_turns reached after it) no longer ends the dialogue
    assert P.committed_answer([long_box, done, long_box]) is None
    assert P.committed_answer([]) is None
