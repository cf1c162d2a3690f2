"""The collaborative solver: the batched two-model dialogue loop (DESIGN §4).

`iter_solve` plays many dialogues at once, side by side instead of one at a time, through one
session per engine (`Engine.open_session`): every active dialogue's next turn is added to its
role's session, and when a turn comes back it is parsed, the dialogue advances and its next
turn (or, once it ends, a new dialogue from the queue) is added at once. When one model plays
both roles (one engine), the long turns of some dialogues and the short turns of others decode
in the same batch. With the transformers engine a session step is one decode step and turns
join the running batch as others finish (continuous batching): no turn waits for the longest
turn of a batch before its dialogue goes on (the batch still thins out when the dialogues left
have nothing to send, e.g. when none are queued); engines without it run each step's turns in one `generate` call (the turns waiting on that
engine then go together, turn by turn). The long model speaks first; a dialogue ends when
the short model closes with ``</answer>``, after `max_turns` long turns, or when a turn hits its
token limit. A dialogue that ends without a final answer is graded on the last boxed answer
seen (`protocol.final_answer`) and flagged.

Modes: ``collab`` (the pair), ``long`` (long model alone, long CoT) and ``short`` (short model
alone, concise): solo modes are one-turn dialogues with the solo prompts and the same record.

Records (one per problem × sample; see docs/architecture.md "dialogue"): ``id`` is the problem's
id when `samples` is 1, else ``"{problem_id}#{k}"``; ``problem_id`` and ``sample`` are always
present. Each sample's seed is derived from (config.seed, record id, turn index), so a record
comes out the same whatever else is in its batch and after a resume.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from longshort.dialogue.protocol import (
    FLAG_MISSING_CLOSE,
    FORMAT_FLAGS,
    OPEN_TAGS,
    PARTNER_STOPS,
    STOP_STRINGS,
    Role,
    Turn,
    final_answer,
    parse_solo,
    parse_turn,
    render_input,
)
from longshort.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams
from longshort.errors import InputError

Mode = Literal["collab", "long", "short"]
MODES: tuple[str, ...] = ("collab", "long", "short")

# Dialogue-level flags (stable strings, stored in JSONL).
DFLAG_TOKEN_LIMIT = "token_limit"          # a turn hit its token limit; the dialogue stopped there
DFLAG_MAX_TURNS = "max_turns"              # max_turns long turns passed without a final answer
DFLAG_NO_FINAL = "no_final_answer"         # ended without a final ``</answer>`` turn
DFLAG_NO_BOXED = "no_boxed_answer"         # no boxed answer anywhere: graded wrong
DFLAG_FORMAT = "format_violation"          # at least one turn needed a repair

# Keys the solver writes; a problem's own fields with these names are not passed through.
RECORD_KEYS = ("id", "problem_id", "sample", "problem", "mode", "turns", "final_answer", "finished",
               "end_reason", "flags", "tokens", "prompt_tokens", "num_turns")


class CollabConfig(BaseModel):
    """Settings of the collaborative solver (and of the solo modes)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(
        4, ge=1, description="Most long-model turns per dialogue (4, the paper's setting: room for a "
                             "few think/hand-back cycles while bounding the cost).")
    max_new_tokens_long: int = Field(
        1024, ge=1, description="Token limit of one long turn (1024: the long model writes the hard "
                                "steps in detail; what happens at it: `long_limit`).")
    long_limit: Literal["hand_back", "stop"] = Field(
        "hand_back", description="A long turn that hits its token limit: 'hand_back' closes it (the "
                                 "missing </think> is repaired, the turn flagged 'truncated') and the short "
                                 "model takes over, as a thinking budget does; 'stop' ends the dialogue "
                                 "there (end_reason token_limit). A short turn at its limit always ends it.")
    max_new_tokens_short: int = Field(
        512, ge=1, description="Token limit of one short turn (512: short turns are meant to be concise; "
                               "half the long limit).")
    solo_max_new_tokens: int | None = Field(
        None, ge=1, description="Token limit of a solo answer (modes long/short); None = the whole dialogue "
                                "budget max_turns × (long + short), so solo and collab runs get the same budget.")
    temperature: float = Field(
        0.7, ge=0.0, description="Sampling temperature of both models (0.7: common for reasoning "
                                 "evaluation with several samples; 0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1.0: plain temperature "
                                                         "sampling, no truncation).")
    seed: int | None = Field(
        0, description="Base seed; each turn's seed derives from it, the record id and the turn index "
                       "(0: reproducible by default; None = unseeded).")
    samples: int = Field(
        1, ge=1, description="Dialogues per problem (1 for solving; >1 for Pass@1 over k samples). "
                             "With >1 the record ids are '{problem_id}#{k}'.")
    force_open_tag: bool = Field(
        True, description="Append the role's opening tag to the assistant prefix so every turn starts "
                          "right (forced tags are part of the turn text, not counted as generated tokens).")
    stop_at_partner_tag: bool = Field(
        True, description="Also stop a turn at the partner's opening tag (the model started writing the "
                          "other role's turn): saves tokens; the turn is repaired and flagged. Only with "
                          "force_open_tag (otherwise a model opening with the wrong tag would stop at once).")
    max_active: int = Field(
        64, ge=1, description="Dialogues in flight at once (64: fills an engine batch on CPU, while an "
                              "interruption loses at most this many unfinished dialogues).")

    @staticmethod
    def token_flags(max_new_tokens: int | None = None, *, long: int | None = None,
                    short: int | None = None) -> dict[str, int]:
        """The overrides of the CLI's token flags (`solve`, `eval`, `serve`): one meaning each.
        `--max-new-tokens N` is the most tokens one generation may write: each turn of either
        role, and a solo answer (modes long/short, one generation); `--max-new-tokens-long`/
        `-short` override it for one role's turns. Flags not given leave the defaults.

        >>> CollabConfig.token_flags(256)
        {'max_new_tokens_long': 256, 'max_new_tokens_short': 256, 'solo_max_new_tokens': 256}
        >>> CollabConfig.token_flags(short=64)
        {'max_new_tokens_short': 64}
        """
        out = {"max_new_tokens_long": long or max_new_tokens, "max_new_tokens_short": short or max_new_tokens,
               "solo_max_new_tokens": max_new_tokens}
        return {k: v for k, v in out.items() if v is not None}

    def solo_limit(self) -> int:
        if self.solo_max_new_tokens is not None:
            return self.solo_max_new_tokens
        return self.max_turns * (self.max_new_tokens_long + self.max_new_tokens_short)


@dataclass
class _Dialogue:
    """One dialogue in flight."""

    rid: str
    problem: dict[str, Any]
    sample: int
    order: int
    next_role: Role = "long"
    turns: list[Turn] = field(default_factory=list)
    prompt_tokens: dict[str, int] = field(default_factory=lambda: {"long": 0, "short": 0})
    end_reason: str | None = None

    @property
    def long_turns(self) -> int:
        return sum(t.role == "long" for t in self.turns)


def _turn_seed(base: int | None, rid: str, turn_index: int) -> int | None:
    if base is None:
        return None
    return (base * 1_000_003 + zlib.crc32(f"{rid}/{turn_index}".encode())) % (2**31 - 1)


def record_id(problem_id: str, sample: int, samples: int) -> str:
    """The record id of sample `sample` of a problem (the problem id itself when samples == 1)."""
    return str(problem_id) if samples == 1 else f"{problem_id}#{sample}"


def _validate_problems(problems: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, p in enumerate(problems):
        if not isinstance(p, dict):
            raise InputError(f"expected a problem record (dict), got {type(p).__name__}", line=i + 1)
        text = p.get("problem")
        if not isinstance(text, str) or not text.strip():
            raise InputError("missing or empty problem text", line=i + 1, field="problem")
        pid = p.get("id")
        if pid is None or not str(pid).strip():
            raise InputError("missing id", line=i + 1, field="id")
        if str(pid) in seen:
            raise InputError(f"duplicate id {pid!r}", line=i + 1, field="id")
        seen.add(str(pid))
        out.append(p)
    return out


def _format_flags(turn: Turn) -> set[str]:
    """The format violations of a turn; a turn cut off by its token limit could not close."""
    found = set(turn.flags) & FORMAT_FLAGS
    if turn.finish_reason == "length":
        found.discard(FLAG_MISSING_CLOSE)
    return found


def _make_record(d: _Dialogue, mode: str) -> dict[str, Any]:
    turns = d.turns
    tokens = {"long": sum(t.tokens for t in turns if t.role == "long"),
              "short": sum(t.tokens for t in turns if t.role == "short")}
    tokens["total"] = tokens["long"] + tokens["short"]
    last = turns[-1]
    finished = last.final and last.finish_reason != "length"
    answer = final_answer(turns)
    flags: list[str] = []
    if d.end_reason == "token_limit":
        flags.append(DFLAG_TOKEN_LIMIT)
    if d.end_reason == "max_turns":
        flags.append(DFLAG_MAX_TURNS)
    if not finished:
        flags.append(DFLAG_NO_FINAL)
    if answer is None:
        flags.append(DFLAG_NO_BOXED)
    if any(_format_flags(t) for t in turns):
        flags.append(DFLAG_FORMAT)
    rec: dict[str, Any] = {
        "id": d.rid,
        "problem_id": str(d.problem["id"]),
        "sample": d.sample,
        "problem": d.problem["problem"],
        "mode": mode,
        "turns": [t.to_dict() for t in turns],
        "final_answer": answer,
        "finished": finished,
        "end_reason": d.end_reason,
        "flags": flags,
        "tokens": tokens,
        "prompt_tokens": dict(d.prompt_tokens),
        "num_turns": len(turns),
    }
    for key, value in d.problem.items():
        if key not in rec:
            rec[key] = value
    return rec


def after_turn(turn: Turn, long_turns: int, config: CollabConfig) -> tuple[Role | None, str | None]:
    """The ending rules of a collaborative dialogue (DESIGN §4) after `turn`, with `long_turns`
    long turns so far: ``(next role, None)`` or ``(None, end reason)``. The one home of these
    rules: the solver and the RL rollout both use it.

    >>> cfg = CollabConfig(max_turns=2)
    >>> cut = Turn(role="long", text="<think>a</think>", finish_reason="length")
    >>> after_turn(cut, 1, cfg), after_turn(cut, 1, CollabConfig(long_limit="stop"))
    (('short', None), (None, 'token_limit'))
    >>> after_turn(Turn(role="short", text="<answer>b</rethink>"), 2, cfg)
    (None, 'max_turns')
    """
    if turn.finish_reason == "length" and (turn.role == "short" or config.long_limit == "stop"):
        return None, "token_limit"
    if turn.role == "long":
        return "short", None
    if turn.final:
        return None, "answer"
    if long_turns >= config.max_turns:
        return None, "max_turns"
    return "long", None


def _advance(d: _Dialogue, turn: Turn, mode: str, config: CollabConfig) -> None:
    """Apply the ending rules after `turn`; set `next_role` or `end_reason`."""
    d.turns.append(turn)
    if mode != "collab":
        d.end_reason = "token_limit" if turn.finish_reason == "length" else "answer"
        return
    role, end = after_turn(turn, d.long_turns, config)
    if end is not None:
        d.end_reason = end
    else:
        d.next_role = role


def turn_stops(role: Role, config: CollabConfig, mode: str = "collab") -> list[str]:
    """Stop strings of a `role` turn: its closing tags, plus the partner's opening tag when the
    opening tag is forced and `stop_at_partner_tag`; a solo long answer runs to EOS."""
    if mode != "collab":
        return list(STOP_STRINGS["short"]) if role == "short" else []
    stops = list(STOP_STRINGS[role])
    if config.stop_at_partner_tag and config.force_open_tag:
        stops += PARTNER_STOPS[role]
    return stops


def turn_limit(role: Role, config: CollabConfig, mode: str = "collab") -> int:
    """Token limit of one `role` turn (a solo answer gets `config.solo_limit()`)."""
    if mode != "collab":
        return config.solo_limit()
    return config.max_new_tokens_long if role == "long" else config.max_new_tokens_short


def _request(role: Role, d: _Dialogue, mode: str, config: CollabConfig) -> GenerationRequest:
    """The generation request of dialogue `d`'s next turn, played by `role`."""
    messages, prefix = render_input(role, d.problem["problem"], d.turns, open_tag=config.force_open_tag,
                                    solo=mode != "collab")
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=turn_limit(role, config, mode), stop=turn_stops(role, config, mode),
                            n=1, seed=_turn_seed(config.seed, d.rid, len(d.turns)))
    return GenerationRequest(messages=messages, assistant_prefix=prefix, params=params,
                             meta={"id": d.rid, "role": role, "turn": len(d.turns)})


def _apply(role: Role, d: _Dialogue, res: GenerationResult, mode: str, config: CollabConfig) -> None:
    """Parse the turn `res` holds and advance dialogue `d` with it."""
    c = res.completions[0]
    forced = OPEN_TAGS[role] if config.force_open_tag else ""
    parse = parse_solo if mode != "collab" else parse_turn
    turn = parse(role, forced + c.text, stop=c.stop, finish_reason=c.finish_reason, tokens=c.num_tokens)
    d.prompt_tokens[role] += int(res.prompt_tokens)
    _advance(d, turn, mode, config)


def iter_solve(problems: Iterable[dict[str, Any]], *, long_engine: Engine | None = None,
               short_engine: Engine | None = None, config: CollabConfig | None = None,
               mode: Mode = "collab", progress: bool = False, skip_ids: Iterable[str] = ()
               ) -> Iterator[dict[str, Any]]:
    """Solve `problems` (dicts with `id` and `problem`), yielding dialogue records as they finish.

    The two engines may be one object (one model plays both roles) or different models with
    different tokenizers (each turn's tokens are counted by the model that wrote it). Mode
    ``long`` needs only `long_engine`, ``short`` only `short_engine`; in ``collab`` a missing one
    falls back to the other. Records whose id is in `skip_ids` are not solved (resume). All
    problems are validated before any generation; a bad one raises `InputError`.
    """
    config = config or CollabConfig()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    long_engine = long_engine or short_engine
    short_engine = short_engine or long_engine
    if long_engine is None:
        raise ValueError("iter_solve needs an engine")
    engines: dict[str, Engine] = {"long": long_engine, "short": short_engine}
    first_role: Role = "short" if mode == "short" else "long"
    skip = {str(s) for s in skip_ids}

    queue: deque[_Dialogue] = deque()
    for order, p in enumerate(_validate_problems(problems)):
        for k in range(config.samples):
            rid = record_id(str(p["id"]), k, config.samples)
            if rid not in skip:
                queue.append(_Dialogue(rid=rid, problem=p, sample=k, order=order, next_role=first_role))

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn(f"solving ({mode})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        task = bar.add_task("solve", total=len(queue))
        bar.start()
    # one session per engine: with one model in both roles, long and short turns share a batch
    groups = [("long", "short")] if engines["long"] is engines["short"] else [("long",), ("short",)]
    sessions = [(roles, engines[roles[0]].open_session()) for roles in groups]
    try:
        active: list[_Dialogue] = []
        sent: dict[str, _Dialogue] = {}  # dialogues whose next turn is in a session
        while queue or active:
            while queue and len(active) < config.max_active:
                active.append(queue.popleft())
            for roles, session in sessions:
                new = [d for d in active if d.end_reason is None and d.next_role in roles and d.rid not in sent]
                if new:
                    session.add([_request(d.next_role, d, mode, config) for d in new])
                    sent.update((d.rid, d) for d in new)
                if not len(session):
                    continue
                for req, res in session.step():
                    _apply(req.meta["role"], sent.pop(req.meta["id"]), res, mode, config)
                for d in [d for d in active if d.end_reason is not None]:
                    active.remove(d)
                    if bar is not None:
                        bar.advance(task)
                    yield _make_record(d, mode)
    finally:
        for _, session in sessions:
            session.close()
        if bar is not None:
            bar.stop()


def solve_problems(problems: Iterable[dict[str, Any]], *, long_engine: Engine | None = None,
                   short_engine: Engine | None = None, config: CollabConfig | None = None,
                   mode: Mode = "collab", progress: bool = False) -> list[dict[str, Any]]:
    """Solve all `problems` (see `iter_solve`); records in input order (problem, then sample)."""
    config = config or CollabConfig()
    problems = list(problems)
    order = {str(p.get("id")): i for i, p in enumerate(problems) if isinstance(p, dict)}
    records = list(iter_solve(problems, long_engine=long_engine, short_engine=short_engine,
                              config=config, mode=mode, progress=progress))
    return sorted(records, key=lambda r: (order[r["problem_id"]], r["sample"]))
