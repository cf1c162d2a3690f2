"""Reward functions for the multi-turn RL of one role (DESIGN §6), in TRL's style.

Each reward is a small pure function ``f(completions, **kwargs) -> list[float]``, one value per
completion, that `trl.GRPOTrainer` calls with the dataset's columns (``answer``, ``choices``)
and the extra fields our dialogue rollout returns (``turns``, ``final_answer``, ``truncated``,
``end_reason``, ``trained_role``, ``dialogue_tokens``, ``role_tokens``) as keyword arguments.
Outside the trainer they work on plain completions too (graded / checked on the text).

- `correctness_reward`: 1.0 when the answer the dialogue *commits to* is right (math-verify),
  else 0.0. Leak-free: only the box of a finished short ``<answer>…</answer>`` turn that ends
  the dialogue counts (`protocol.committed_answer`); a box in a long turn, a dialogue that ended
  at a token limit (``truncated``) or at ``max_turns`` earns nothing. (Evaluation still grades
  the last box seen, DESIGN §4; RL pays only for what the protocol asks of the short role.)
- `format_reward`: the share of the trained role's turns that needed no tag repair.
- `length_reward`: for a right answer only, ``1 - tokens / budget`` (clipped to [0, 1]); 0.0 for
  a wrong one. It uses the same right/wrong rule, so being zero on wrong answers it can never
  lift a wrong answer above a right one.

`RewardConfig` holds the weights. It insists on ``correctness_weight > format_weight``: then a
right answer scores at least ``correctness_weight`` and a wrong one at most ``format_weight``,
whatever the lengths and formats, so the weighted sum always ranks right above wrong.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from longshort.dialogue.protocol import (
    ANSWER_OPEN,
    FLAG_EMPTY,
    FLAG_TRUNCATED,
    FORMAT_FLAGS,
    Turn,
    committed_answer,
    is_valid_turn,
)

# A turn of each role, as it must look (DESIGN §4); used when no parsed `turns` are given.
_TURN_PATTERNS = {
    "long": re.compile(r"\s*<think>(?:(?!<think>).)*?</think>\s*", re.DOTALL),
    "short": re.compile(r"\s*<answer>(?:(?!<answer>).)*?</(?:rethink|answer)>\s*", re.DOTALL),
}


class RewardConfig(BaseModel):
    """Weights and parameters of the RL rewards (the weighted sum is what GRPO normalises)."""

    correctness_weight: float = Field(
        1.0, gt=0, description="weight of the right/wrong reward; 1.0 so the total reads as accuracy plus bonuses")
    format_weight: float = Field(
        0.2, ge=0, description="weight of the format reward; small (0.2) so format never outweighs correctness")
    length_weight: float = Field(
        0.3, ge=0, description="weight of the length bonus of right answers; 0.3 rewards brevity without "
        "pushing answers towards truncation")
    length_budget: int = Field(
        2048, gt=0, description="tokens at which the length bonus reaches 0; about the paper's ~2k-token "
        "collaborative answers")
    length_count: Literal["dialogue", "role"] = Field(
        "dialogue", description="count the whole dialogue's generated tokens (the cost the method cuts) or "
        "only the trained role's")

    @model_validator(mode="after")
    def _right_always_beats_wrong(self) -> RewardConfig:
        if self.correctness_weight <= self.format_weight:
            raise ValueError(
                f"correctness_weight ({self.correctness_weight}) must exceed format_weight "
                f"({self.format_weight}), or a well-formatted wrong answer could outrank a right one")
        return self

    def weights(self) -> list[float]:
        """Weights in the order of `reward_functions(...)`: correctness, format, length."""
        return [self.correctness_weight, self.format_weight, self.length_weight]


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a string, or a list of chat messages.

    >>> completion_text("<think>a</think>")
    '<think>a</think>'
    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence):
        return "".join(completion_text(m) for m in completion)
    return str(completion)


@functools.lru_cache(maxsize=65536)
def _graded(prediction: str, gold: str, choices: tuple[str, ...] | None) -> bool:
    # Imported here: math-verify is slow to import and only needed when grading.
    from longshort.evaluation.grading import grade

    return bool(grade(prediction, gold, choices=list(choices) if choices else None))


def _column(name: str, values: Sequence[Any] | None, n: int) -> list[Any]:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward input '{name}' has {len(values)} values for {n} completions")
    return values


def committed_from_text(text: str) -> str | None:
    r"""The committed answer of a completion given only as text: the box of its last turn when
    that turn is a whole short ``<answer>…</answer>`` turn at the very end (`committed_answer`'s
    rule; a text cannot show a token limit, so pass ``truncated``/``turns`` when you have them).

    >>> committed_from_text("<think>so \\boxed{8}</think>\n<answer>done \\boxed{8}</answer>")
    '8'
    >>> committed_from_text("<think>so \\boxed{8}</think>") is None
    True
    >>> committed_from_text("<answer>\\boxed{8}</answer>\n<think>more") is None
    True
    """
    text = text.rstrip()
    pos = text.rfind(ANSWER_OPEN)
    if pos == -1:
        return None
    last = text[pos:]
    if not is_valid_turn("short", last):
        return None
    return committed_answer([Turn("short", last, final=True)])


def committed_predictions(completions: Sequence[Any], final_answer: Sequence[str | None] | None = None,
                          turns: Sequence[Sequence[Any] | None] | None = None,
                          truncated: Sequence[bool] | None = None,
                          end_reason: Sequence[str | None] | None = None) -> list[str | None]:
    """The answer each dialogue commits to (None: none), by the first rule that applies:

    1. ``truncated[i]`` is true, or ``end_reason[i]`` is given and is not ``"answer"``: None
       (the dialogue ended at a token limit or at ``max_turns``);
    2. ``turns[i]`` given (the rollout's parsed turns, `Turn`s or their dicts):
       ``protocol.committed_answer(turns[i])``; this wins over `final_answer`, so a caller that
       passes a last-box-anywhere answer cannot leak correctness to the long role;
    3. ``final_answer[i]`` given: taken as is (the rollout's ``committed_answer(turns)``);
    4. else the completion text, by `committed_from_text`.
    """
    n = len(completions)
    cut = _column("truncated", truncated, n)
    ends = _column("end_reason", end_reason, n)
    dialogues = _column("turns", turns, n) if turns is not None else None
    finals = _column("final_answer", final_answer, n) if final_answer is not None else None
    out: list[str | None] = []
    for i, completion in enumerate(completions):
        if cut[i] or (ends[i] is not None and ends[i] != "answer"):
            pred = None
        elif dialogues is not None and dialogues[i] is not None:
            pred = committed_answer(dialogues[i])
        elif finals is not None:
            pred = finals[i]
        else:
            pred = committed_from_text(completion_text(completion))
        out.append(pred if pred is not None and str(pred).strip() else None)
    return out


def is_correct(completions: Sequence[Any], answer: Sequence[Any] | None = None,
               final_answer: Sequence[str | None] | None = None,
               choices: Sequence[Any] | None = None, *,
               turns: Sequence[Sequence[Any] | None] | None = None,
               truncated: Sequence[bool] | None = None,
               end_reason: Sequence[str | None] | None = None) -> list[bool]:
    """Right/wrong per completion: the committed answer (`committed_predictions`) graded
    against the gold `answer` by math-verify. No committed answer = wrong."""
    n = len(completions)
    if answer is None:
        raise ValueError("correctness needs the gold `answer` column in the training data")
    golds = _column("answer", answer, n)
    options = _column("choices", choices, n)
    preds = committed_predictions(completions, final_answer, turns, truncated, end_reason)
    out = []
    for pred, gold, opts in zip(preds, golds, options, strict=True):
        if pred is None:
            out.append(False)
            continue
        # an extracted answer: grade it as the boxed answer it was
        out.append(_graded(f"\\boxed{{{pred}}}", str(gold), tuple(str(c) for c in opts) if opts else None))
    return out


def correctness_reward(completions: Sequence[Any], answer: Sequence[Any] | None = None,
                       final_answer: Sequence[str | None] | None = None,
                       choices: Sequence[Any] | None = None, *,
                       turns: Sequence[Sequence[Any] | None] | None = None,
                       truncated: Sequence[bool] | None = None,
                       end_reason: Sequence[str | None] | None = None, **kwargs: Any) -> list[float]:
    r"""1.0 if the answer the dialogue commits to matches the gold answer (math-verify), else 0.0.

    Only the box of a finished short ``<answer>…</answer>`` turn that ends the dialogue counts:
    a box in a long turn, a cut-off final turn, a dialogue that ended at a token limit or at
    ``max_turns`` earn 0.0 (see `committed_predictions` for the order of the rules).

    Args:
        completions: the completions (strings or chat messages); read only when neither
            `turns` nor `final_answer` is given.
        answer: gold answers, one per completion (the dataset's ``answer`` column).
        final_answer: per dialogue, ``protocol.committed_answer(turns)`` (None = no answer).
        choices: multiple-choice options per completion, or None.
        turns: per dialogue, its parsed turns (``{"role", "text", "finish_reason", "flags",
            "final"}``); when given, the committed answer is recomputed from them.
        truncated: per dialogue, True when it ended because a turn hit its token limit.
        end_reason: per dialogue, ``answer`` | ``max_turns`` | ``token_limit``; anything but
            ``answer`` earns 0.0.
        **kwargs: other columns, ignored (TRL passes everything it has).

    Example:

    >>> correctness_reward(["<answer>So \\boxed{4}</answer>", "<answer>\\boxed{5}</answer>"],
    ...                    answer=["4", "4"])
    [1.0, 0.0]
    >>> correctness_reward(["<think>it is \\boxed{4}</think>"], answer=["4"])  # long-turn box
    [0.0]
    >>> correctness_reward(["...", "...", "..."], answer=["1/2"] * 3, final_answer=["0.5", None, "0.5"],
    ...                    truncated=[False, False, True])
    [1.0, 0.0, 0.0]
    >>> turns = [{"role": "long", "text": "<think>\\boxed{4}</think>"},
    ...          {"role": "short", "text": "<answer>\\boxed{4}</answer>", "final": True}]
    >>> correctness_reward([""], answer=["4"], turns=[turns]), correctness_reward([""], answer=["4"], turns=[turns[:1]])
    ([1.0], [0.0])
    """
    return [1.0 if ok else 0.0 for ok in is_correct(completions, answer, final_answer, choices, turns=turns,
                                                    truncated=truncated, end_reason=end_reason)]


def turn_well_formed(turn: Any) -> bool:
    """A parsed turn (``Turn`` or its dict) is well formed when parsing repaired nothing
    (`protocol.FORMAT_FLAGS`), it is not empty and it closed within its token limit. (Unlike the
    evaluation statistics, which excuse a cut-off turn its missing closing tag, RL must teach
    each role to close its turn in time: a truncated turn ends the dialogue.)

    >>> turn_well_formed({"flags": [], "finish_reason": "stop"})
    True
    >>> turn_well_formed({"flags": ["missing_close_tag", "truncated"], "finish_reason": "length"})
    False
    >>> turn_well_formed({"flags": ["missing_open_tag"]})
    False
    """
    get = turn.get if isinstance(turn, dict) else (lambda k, d=None: getattr(turn, k, d))
    bad = set(get("flags", None) or []) & (FORMAT_FLAGS | {FLAG_EMPTY, FLAG_TRUNCATED})
    return not bad and get("finish_reason", "stop") != "length"


def format_reward(completions: Sequence[Any], turns: Sequence[Sequence[dict]] | None = None,
                  trained_role: Sequence[str] | str | None = None, **kwargs: Any) -> list[float]:
    r"""The share of the trained role's turns that were well formed (no flags from parsing).

    With `turns` (the rollout's parsed turns, each ``{"role", "flags", "finish_reason", ...}``) a
    turn counts as well formed by `turn_well_formed`. A dialogue in
    which the trained role never spoke gets 0.0. Without `turns`, the completion text itself
    must be one or more whole turns of `trained_role` (default ``long``).

    Example:

    >>> turns = [[{"role": "long", "flags": []}, {"role": "short", "flags": ["missing_open_tag"]},
    ...           {"role": "long", "flags": ["missing_close_tag"]}],
    ...          [{"role": "long", "flags": []}]]
    >>> format_reward(["", ""], turns=turns, trained_role=["long", "long"])
    [0.5, 1.0]
    >>> format_reward(["<think>ok</think>", "<think>unclosed"], trained_role="long")
    [1.0, 0.0]
    >>> format_reward(["<answer>x</rethink>"], trained_role="short")
    [1.0]
    """
    n = len(completions)
    roles = [trained_role] * n if isinstance(trained_role, str) or trained_role is None else list(trained_role)
    roles = [r or "long" for r in _column("trained_role", roles, n)]
    if turns is None:
        out = []
        for completion, role in zip(completions, roles, strict=True):
            text = completion_text(completion)
            whole = re.fullmatch(f"(?:{_TURN_PATTERNS[role].pattern})+", text, re.DOTALL)
            out.append(1.0 if whole else 0.0)
        return out
    out = []
    for dialogue, role in zip(_column("turns", turns, n), roles, strict=True):
        own = [t for t in (dialogue or []) if t.get("role") == role]
        out.append(sum(1 for t in own if turn_well_formed(t)) / len(own) if own else 0.0)
    return out


def length_reward(completions: Sequence[Any], answer: Sequence[Any] | None = None,
                  final_answer: Sequence[str | None] | None = None,
                  choices: Sequence[Any] | None = None,
                  dialogue_tokens: Sequence[int] | None = None, role_tokens: Sequence[int] | None = None,
                  completion_ids: Sequence[Sequence[int]] | None = None, *, budget: int = 2048,
                  count: str = "dialogue", turns: Sequence[Sequence[Any] | None] | None = None,
                  truncated: Sequence[bool] | None = None, end_reason: Sequence[str | None] | None = None,
                  **kwargs: Any) -> list[float]:
    r"""A brevity bonus for right answers only: ``max(0, 1 - tokens / budget)``; 0.0 if wrong.

    Right/wrong is `correctness_reward`'s rule (same `final_answer`, `turns`, `truncated`,
    `end_reason` arguments), so the bonus is never paid where correctness is not.

    Tokens are the dialogue's generated tokens (long + short, each counted by its own
    tokenizer; ``count="dialogue"``) or the trained role's alone (``count="role"``); without
    them, the completion's token ids. Prompt tokens never count. Since a wrong answer always
    gets 0.0 and a right one at least 0.0, this term never ranks a wrong answer above a right
    one.

    Example:

    >>> length_reward(["", "", ""], answer=["4", "4", "4"], final_answer=["4", "4", "5"],
    ...               dialogue_tokens=[100, 300, 10], budget=400)
    [0.75, 0.25, 0.0]
    >>> length_reward([""], answer=["4"], final_answer=["4"], dialogue_tokens=[900], budget=400)
    [0.0]
    """
    n = len(completions)
    if count not in ("dialogue", "role"):
        raise ValueError(f"count must be 'dialogue' or 'role', got {count!r}")
    tokens = dialogue_tokens if count == "dialogue" else role_tokens
    if tokens is None and completion_ids is not None:
        tokens = [len(ids) for ids in completion_ids]
    if tokens is None:
        raise ValueError(f"length_reward needs '{'dialogue_tokens' if count == 'dialogue' else 'role_tokens'}' "
                         "or 'completion_ids'")
    tokens = _column("tokens", tokens, n)
    right = is_correct(completions, answer, final_answer, choices, turns=turns, truncated=truncated,
                       end_reason=end_reason)
    return [max(0.0, 1.0 - float(t) / budget) if ok else 0.0 for ok, t in zip(right, tokens, strict=True)]


def reward_functions(config: RewardConfig | None = None) -> list:
    """The three rewards bound to `config`, named for TRL's logs (``rewards/<name>/mean``),
    in the order of `RewardConfig.weights()`."""
    config = config or RewardConfig()

    def correctness(completions, **kwargs):
        return correctness_reward(completions, **kwargs)

    def format(completions, **kwargs):  # noqa: A001 - the name shows in TRL's logs
        return format_reward(completions, **kwargs)

    def length(completions, **kwargs):
        return length_reward(completions, budget=config.length_budget, count=config.length_count, **kwargs)

    return [correctness, format, length]
