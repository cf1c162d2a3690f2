"""The Long⊗Short dialogue protocol: prompts, tags, rendering, parsing and repair (DESIGN §4).

Two models solve a problem in turns. The long-thought model writes the important thoughts in
detail as ``<think> … </think>``; the short-thought model writes the rest concisely as
``<answer> … </rethink>`` (hand back to the long model) or ``<answer> … \\boxed{X} </answer>``
(final answer). The long model speaks first.

Rendering (see docs/design-notes.md, "one transcript, continued as the assistant message"):
each role sees ``[system(role), user(question)]`` and continues the transcript as its own
assistant message, so ``render_input`` returns ``(messages, assistant_prefix)`` where the prefix
is every earlier turn (tags included) followed by a newline.

Parsing never silently accepts a malformed turn: ``parse_turn`` returns a repaired, valid turn
plus flags naming each repair (``FLAG_*`` below). ``is_valid_turn`` is the grammar the repair
guarantees: opening tag, a body without protocol tags, one closing tag of the role.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["long", "short"]
ROLES: tuple[Role, Role] = ("long", "short")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE, RETHINK_CLOSE = "<answer>", "</answer>", "</rethink>"
#: Every tag of the protocol; none may appear inside a turn's body.
TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, RETHINK_CLOSE)

OPEN_TAGS: dict[str, str] = {"long": THINK_OPEN, "short": ANSWER_OPEN}
CLOSE_TAGS: dict[str, tuple[str, ...]] = {"long": (THINK_CLOSE,), "short": (RETHINK_CLOSE, ANSWER_CLOSE)}
#: Where generation of a role's turn stops (the engine cuts the matched string; we re-add it).
STOP_STRINGS: dict[str, list[str]] = {"long": [THINK_CLOSE], "short": [RETHINK_CLOSE, ANSWER_CLOSE]}
#: Optional extra stops: the partner's opening tag means the model started writing the other
#: role's turn; stopping there saves tokens (the turn is then repaired and flagged).
PARTNER_STOPS: dict[str, list[str]] = {"long": [ANSWER_OPEN], "short": [THINK_OPEN]}

# Flags recorded on a turn (repairs and notable conditions). Stable strings: stored in JSONL.
FLAG_MISSING_OPEN = "missing_open_tag"      # no opening tag: one was added
FLAG_WRONG_TAG = "wrong_tag"                # the other role's tag used to open/close: replaced
FLAG_LEADING_TEXT = "leading_text"          # text before the opening tag: discarded
FLAG_MISSING_CLOSE = "missing_close_tag"    # no closing tag: one was added
FLAG_TRAILING_TEXT = "trailing_text"        # text after the closing tag: discarded
FLAG_STRAY_TAG = "stray_tag"                # protocol tag inside the body: removed
FLAG_FINAL_WITHOUT_BOXED = "final_without_boxed"  # closed with </answer> but no \boxed{}
FLAG_EMPTY = "empty_turn"                   # nothing between the tags
FLAG_TRUNCATED = "truncated"                # hit the per-turn token limit
#: Flags that mean the model broke the format (a repair was needed).
FORMAT_FLAGS = frozenset({FLAG_MISSING_OPEN, FLAG_WRONG_TAG, FLAG_LEADING_TEXT, FLAG_MISSING_CLOSE,
                          FLAG_TRAILING_TEXT, FLAG_STRAY_TAG})

_MC_NOTE = "For a multiple-choice question, put only the letter of the chosen option in \\boxed{}."

SYSTEM_PROMPTS: dict[str, str] = {
    "long": (
        "You are the deep thinker in a team of two that solves a problem together, taking turns. "
        "Your job is the thoughts that decide the outcome: understanding what is asked, choosing "
        "the approach, the hard or error-prone steps, and checks that could change the result. "
        "Write them out carefully and in full detail. Your partner, a fast solver, takes care of "
        "routine steps and writes the final answer.\n"
        "Write exactly one turn: begin with <think>, reason, and end with </think> as soon as the "
        "rest is routine enough for your partner. Do not write the final answer yourself."
    ),
    "short": (
        "You are the fast solver in a team of two that solves a problem together, taking turns. "
        "Your partner writes the important thoughts in detail inside <think> ... </think>. You "
        "carry out the remaining routine work briefly: short sentences, the essential "
        "calculations, no repetition.\n"
        "Write exactly one turn: begin with <answer>. If the next step needs careful thinking, "
        "say what is open and end with </rethink> to hand the problem back to your partner. If "
        "you can finish, state the final answer as \\boxed{X} and end with </answer>. " + _MC_NOTE
    ),
}

SOLO_PROMPTS: dict[str, str] = {
    "long": (
        "Solve the problem by thinking step by step in full detail. Put all of your reasoning "
        "inside <think> ... </think>, then state the final answer as \\boxed{X}. " + _MC_NOTE
    ),
    "short": (
        "Solve the problem concisely: only the essential steps, no repetition. Write your solution "
        "inside <answer> ... </answer> and state the final answer in it as \\boxed{X}. " + _MC_NOTE
    ),
}


@dataclass
class Turn:
    """One turn of a dialogue, always valid after `parse_turn` (see `is_valid_turn`).

    text: the turn with its tags (repaired if needed); tokens: generated tokens of this turn in
    the speaking model's tokenizer (a forced opening tag is not counted); finish_reason: "stop"
    or "length"; flags: the repairs/conditions (FLAG_*); final: the turn gives the final answer
    (a dialogue turn closing with </answer>; a solo answer not cut off by the token limit).
    """

    role: Role
    text: str
    tokens: int = 0
    finish_reason: str = "stop"
    flags: list[str] = field(default_factory=list)
    final: bool = False

    @property
    def body(self) -> str:
        """The text between the opening tag and the closing tag."""
        return split_turn(self.role, self.text)[1]

    @property
    def boxed(self) -> str | None:
        return extract_boxed(self.text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        return cls(role=d["role"], text=d["text"], tokens=int(d.get("tokens", 0)),
                   finish_reason=d.get("finish_reason", "stop"), flags=list(d.get("flags", [])),
                   final=bool(d.get("final", d["text"].rstrip().endswith(ANSWER_CLOSE))))


# --------------------------------------------------------------------------- boxed answers

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")


def _boxed_content(text: str, start: int) -> str | None:
    """Content of a \\boxed that ends its command name at `start`, or None if unbalanced."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
            j += 1
        return None  # unbalanced (e.g. cut off by the token limit)
    if i > start:  # "\boxed 5": the argument is the next run of non-space characters
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`.

    Nested braces are matched; an unbalanced last box (cut off) is skipped in favour of an
    earlier complete one. Returns the content stripped of surrounding spaces, or None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} or rather \\boxed{3}")
    '3'
    >>> extract_boxed(r"\\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_boxed("no answer") is None
    True
    """
    if not text:
        return None
    for m in reversed(list(_BOXED.finditer(text))):
        content = _boxed_content(text, m.end())
        if content is not None:
            return content.strip()
    return None


# --------------------------------------------------------------------------- rendering


def _turn_text(turn: Turn | str | dict[str, Any]) -> str:
    if isinstance(turn, Turn):
        return turn.text
    if isinstance(turn, dict):
        return turn["text"]
    return str(turn)


def render_transcript(turns: Iterable[Turn | str | dict[str, Any]]) -> str:
    """The transcript: every turn's text (tags included), joined by a newline."""
    return "\n".join(_turn_text(t) for t in turns)


def render_input(role: Role, question: str, turns: Sequence[Turn | str | dict[str, Any]] = (), *,
                 open_tag: bool = False, solo: bool = False) -> tuple[list[dict[str, str]], str]:
    """What `role` sees before writing its next turn: ``(messages, assistant_prefix)``.

    messages = [system prompt of the role (or the solo prompt), user message = the question];
    assistant_prefix = the transcript so far plus a newline (empty for the first turn), so the
    role continues the dialogue as its own assistant message. With `open_tag` the role's opening
    tag is appended (forcing the turn to start correctly).

    >>> msgs, prefix = render_input("short", "1+1?", ["<think>\\nit is 2\\n</think>"])
    >>> [m["role"] for m in msgs], prefix
    (['system', 'user'], '<think>\\nit is 2\\n</think>\\n')
    """
    if role not in OPEN_TAGS:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if solo and turns:
        raise ValueError("a solo answer has no earlier turns")
    system = (SOLO_PROMPTS if solo else SYSTEM_PROMPTS)[role]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    prefix = render_transcript(turns) + "\n" if turns else ""
    if open_tag:
        prefix += OPEN_TAGS[role]
    return messages, prefix


def format_turn(role: Role, body: str, *, final: bool = False) -> str:
    """Wrap `body` in the role's tags (short turns: ``</answer>`` if `final`, else ``</rethink>``)."""
    if role == "long":
        if final:
            raise ValueError("only the short role writes the final answer")
        return f"{THINK_OPEN}{body}{THINK_CLOSE}"
    return f"{ANSWER_OPEN}{body}{ANSWER_CLOSE if final else RETHINK_CLOSE}"


# --------------------------------------------------------------------------- validation


def split_turn(role: Role, text: str) -> tuple[str, str, str]:
    """Split a valid turn into (open tag, body, close tag); ValueError if it is not valid."""
    open_tag = OPEN_TAGS[role]
    if not text.startswith(open_tag):
        raise ValueError(f"{role} turn must start with {open_tag}")
    for close in CLOSE_TAGS[role]:
        if text.endswith(close) and len(text) >= len(open_tag) + len(close):
            body = text[len(open_tag):len(text) - len(close)]
            if any(tag in body for tag in TAGS):
                raise ValueError("protocol tag inside the body")
            return open_tag, body, close
    raise ValueError(f"{role} turn must end with one of {CLOSE_TAGS[role]}")


def is_valid_turn(role: Role, text: str) -> bool:
    """True when `text` is one well-formed turn of `role` (opening tag, tag-free body, close)."""
    try:
        split_turn(role, text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- parsing + repair


def _remove_tags(body: str) -> tuple[str, bool]:
    """Remove every protocol tag from `body` (repeatedly: removal can join a new tag)."""
    removed = False
    while True:
        before = body
        for tag in TAGS:
            body = body.replace(tag, "")
        if body == before:
            return body, removed
        removed = True


def _strip_partial_tag(body: str) -> str:
    """Drop the beginning of a tag cut off at the end of a truncated turn (``... </thi``)."""
    for k in range(min(len(body), max(len(t) for t in TAGS) - 1), 1, -1):
        tail = body[-k:]
        if any(tag.startswith(tail) for tag in TAGS):
            return body[:-k]
    return body


def _find_first(text: str, needles: Iterable[str], start: int) -> tuple[int, str | None]:
    best, which = -1, None
    for needle in needles:
        pos = text.find(needle, start)
        if pos != -1 and (best == -1 or pos < best):
            best, which = pos, needle
    return best, which


def parse_turn(role: Role, raw_text: str, stop: str | None = None, finish_reason: str = "stop", *,
               tokens: int = 0) -> Turn:
    """Validate one generated turn of `role`, repair it if needed and record what was repaired.

    `raw_text` is what the model wrote (with a forced opening tag, if any, at its start);
    `stop` is the stop string that ended generation (engines cut it from the text; it is put
    back here). Repairs: a missing/wrong opening tag is added/replaced, text before the opening
    tag or after the closing tag is discarded, protocol tags inside the body are removed, a
    missing closing tag is added — for a short turn ``</answer>`` when it holds a boxed answer
    and was not cut off by the token limit, else ``</rethink>``. Each repair adds a flag.

    >>> t = parse_turn("short", "<answer> 2+2=4, so \\\\boxed{4}", stop="</answer>")
    >>> t.text, t.final, t.flags
    ('<answer> 2+2=4, so \\\\boxed{4}</answer>', True, [])
    >>> parse_turn("long", "Let me think.", finish_reason="length").flags
    ['missing_open_tag', 'missing_close_tag', 'truncated']
    """
    if role not in OPEN_TAGS:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    flags: list[str] = []
    text = (raw_text or "") + (stop or "")
    open_tag = OPEN_TAGS[role]
    partner = "short" if role == "long" else "long"
    partner_open = OPEN_TAGS[partner]

    # 1. Opening tag.
    stripped = text.lstrip()
    if stripped.startswith(open_tag):
        body_start = len(text) - len(stripped) + len(open_tag)
    elif stripped.startswith(partner_open):
        flags.append(FLAG_WRONG_TAG)
        body_start = len(text) - len(stripped) + len(partner_open)
    else:
        pos = text.find(open_tag)
        if pos != -1:
            flags.append(FLAG_LEADING_TEXT)
            body_start = pos + len(open_tag)
        else:
            flags.append(FLAG_MISSING_OPEN)
            body_start = len(text) - len(stripped)

    # 2. The first tag that ends the turn: own close, other close tags, or the partner's opening.
    own_close = CLOSE_TAGS[role]
    wrong_close = CLOSE_TAGS[partner]
    pos, tag = _find_first(text, own_close + wrong_close + (partner_open,), body_start)
    body = text[body_start:] if pos == -1 else text[body_start:pos]
    rest = "" if pos == -1 else text[pos + len(tag):]

    body, had_stray = _remove_tags(body)
    if had_stray:
        flags.append(FLAG_STRAY_TAG)
    truncated = finish_reason == "length"

    def repaired_close() -> str:
        if role == "long":
            return THINK_CLOSE
        return ANSWER_CLOSE if (not truncated and extract_boxed(body) is not None) else RETHINK_CLOSE

    if tag in own_close:
        close = tag
    elif tag in wrong_close:
        flags.append(FLAG_WRONG_TAG)
        close = repaired_close()
    else:  # no closing tag, or the partner's opening tag: the turn never closed
        if tag is not None:
            rest = text[pos:]
        flags.append(FLAG_MISSING_CLOSE)
        if tag is None and truncated:
            body = _strip_partial_tag(body)
        close = repaired_close()
    if rest.strip():
        flags.append(FLAG_TRAILING_TEXT)
    if not body.strip():
        flags.append(FLAG_EMPTY)
    final = close == ANSWER_CLOSE
    if final and extract_boxed(body) is None:
        flags.append(FLAG_FINAL_WITHOUT_BOXED)
    if truncated:
        flags.append(FLAG_TRUNCATED)
    flags = list(dict.fromkeys(flags))  # unique, in order
    return Turn(role=role, text=open_tag + body + close, tokens=tokens, finish_reason=finish_reason,
                flags=flags, final=final)


def parse_solo(role: Role, raw_text: str, stop: str | None = None, finish_reason: str = "stop", *,
               tokens: int = 0) -> Turn:
    """Parse a solo answer (eval modes ``long`` / ``short``), repairing like `parse_turn`.

    Solo long: ``<think> reasoning </think>`` followed by the final answer (kept, not trailing
    text); no ``</think>`` → one is added at the end and flagged. Solo short: one final short
    turn ``<answer> … </answer>`` (a ``</rethink>`` close is a wrong tag, replaced). A solo
    answer is `final` unless it was cut off by the token limit.
    """
    if role == "short":
        turn = parse_turn("short", raw_text, stop, finish_reason, tokens=tokens)
        if turn.text.endswith(RETHINK_CLOSE):
            turn.text = turn.text[:-len(RETHINK_CLOSE)] + ANSWER_CLOSE
            if FLAG_MISSING_CLOSE not in turn.flags:
                turn.flags.append(FLAG_WRONG_TAG)
        turn.final = finish_reason != "length"
        if extract_boxed(turn.text) is None and FLAG_FINAL_WITHOUT_BOXED not in turn.flags:
            turn.flags.append(FLAG_FINAL_WITHOUT_BOXED)
        return turn
    flags: list[str] = []
    text = (raw_text or "") + (stop or "")
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        stripped = stripped[len(THINK_OPEN):]
    else:
        flags.append(FLAG_MISSING_OPEN)
    pos = stripped.find(THINK_CLOSE)
    if pos == -1:
        flags.append(FLAG_MISSING_CLOSE)
        thought, answer = stripped, ""
        if finish_reason == "length":
            thought = _strip_partial_tag(thought)
    else:
        thought, answer = stripped[:pos], stripped[pos + len(THINK_CLOSE):]
    thought, had_stray = _remove_tags(thought)
    if had_stray:
        flags.append(FLAG_STRAY_TAG)
    full = THINK_OPEN + thought + THINK_CLOSE + answer
    if extract_boxed(full) is None:
        flags.append(FLAG_FINAL_WITHOUT_BOXED)
    if finish_reason == "length":
        flags.append(FLAG_TRUNCATED)
    return Turn(role="long", text=full, tokens=tokens, finish_reason=finish_reason, flags=flags,
                final=finish_reason != "length")


def final_answer(turns: Sequence[Turn]) -> str | None:
    """The answer a dialogue is graded on: the last boxed answer seen in any turn (None: wrong)."""
    for turn in reversed(turns):
        boxed = extract_boxed(turn.text)
        if boxed is not None:
            return boxed
    return None


def committed_answer(turns: Sequence[Turn | dict[str, Any]]) -> str | None:
    r"""The answer a dialogue *commits to*, for the RL correctness reward: the boxed answer of
    its last turn when that turn is a short turn that closed with ``</answer>`` by itself (not cut
    at its token limit, no closing tag added by repair). Anything else (a box only in a long turn,
    a dialogue that ended at a token limit or at ``max_turns``) commits to nothing: None.

    Evaluation keeps grading with `final_answer` (DESIGN §4); this stricter rule is what RL pays
    for, so the long role can never earn correctness by writing the answer itself.

    >>> long_box = Turn("long", "<think>so \\boxed{8}</think>")
    >>> committed_answer([long_box]) is None
    True
    >>> done = Turn("short", "<answer>\\boxed{8}</answer>", final=True)
    >>> committed_answer([long_box, done])
    '8'
    >>> cut = Turn("short", "<answer>\\boxed{8}</answer>", finish_reason="length", final=True,
    ...            flags=["missing_close_tag", "truncated"])
    >>> committed_answer([long_box, cut]) is None
    True
    """
    if not turns:
        return None
    last = turns[-1]
    if isinstance(last, dict):
        last = Turn.from_dict(last)
    if last.role != "short" or not last.final or last.finish_reason == "length":
        return None
    if FLAG_MISSING_CLOSE in last.flags or FLAG_TRUNCATED in last.flags:
        return None
    if not last.text.rstrip().endswith(ANSWER_CLOSE):
        return None
    return extract_boxed(last.text)


_TURN_RE = re.compile(
    re.escape(THINK_OPEN) + r"(?:(?!<).|<(?!/?(?:think|answer|rethink)>))*?" + re.escape(THINK_CLOSE)
    + "|" + re.escape(ANSWER_OPEN) + r"(?:(?!<).|<(?!/?(?:think|answer|rethink)>))*?"
    + "(?:" + re.escape(RETHINK_CLOSE) + "|" + re.escape(ANSWER_CLOSE) + ")",
    re.DOTALL,
)


def parse_transcript(transcript: str) -> list[Turn]:
    """Split a transcript made by `render_transcript` back into turns (inverse of rendering).

    Raises ValueError when the text is not valid turns separated by newlines.

    >>> [t.role for t in parse_transcript("<think>a</think>\\n<answer>b</rethink>")]
    ['long', 'short']
    """
    turns: list[Turn] = []
    pos = 0
    while pos < len(transcript):
        if turns:
            if transcript[pos] != "\n":
                raise ValueError(f"expected a newline between turns at offset {pos}")
            pos += 1
        m = _TURN_RE.match(transcript, pos)
        if m is None:
            raise ValueError(f"no valid turn at offset {pos}")
        text = m.group(0)
        role: Role = "long" if text.startswith(THINK_OPEN) else "short"
        turns.append(Turn(role=role, text=text, final=text.endswith(ANSWER_CLOSE)))
        pos = m.end()
    return turns
