"""The RL rollout: `DialogueRollout`, passed to TRL's `GRPOTrainer` as ``rollout_func``.

It plays whole dialogues (DESIGN §4, same ending rules as `longshort.dialogue.collab`).
Following the continuation design of docs/architecture.md, every role continues one transcript as
its assistant message, so a dialogue seen from the trained role is one token sequence in the trained role's tokenizer:

- ``prompt_ids``: the trained role's first input, `engines.base.render_chat` (chat template +
  transcript so far, the text its SFT example and every engine give it),
- ``completion_ids``: its turns as it generated them (policy tokens, ``env_mask = 1``) with,
  between them, the partner's turns, newlines and forced opening tags tokenised by the trained
  role's tokenizer (environment tokens, ``env_mask = 0``), then EOS (environment) when the
  dialogue ended by the rules; a dialogue cut at a token limit has no EOS, so TRL counts it as
  truncated (``completions/clipped_ratio``, ``mask_truncated_completions``),
- ``logprobs``: the sampling log-probabilities of the policy tokens (0.0 on environment tokens).

The policy's turns are sampled by a small decoding loop on exactly those token ids (so training
sees the context the policy sampled in, not a re-tokenisation of its text) with the engine's
sampler (`engines.hf.sample_tokens`); the partner's turns come from an `Engine` (in-process
transformers, or any OpenAI-compatible server via ``partner_base_url``), which tokenises with its
own tokenizer: the two models may have different tokenizers. Extra fields (``final_answer`` =
`protocol.committed_answer`, the only answer RL pays for; ``turns``, ``trained_role``,
``dialogue_tokens``, ``role_tokens``, ``truncated``, ...) reach the reward functions of
`longshort.training.rewards`.

With a `RolloutScorer` and ``dynamic_sampling``, the rollout scores its dialogues itself and
replaces problems whose group of dialogues got identical rewards (DAPO).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from longshort.dialogue.collab import CollabConfig, after_turn, turn_limit, turn_stops
from longshort.dialogue.protocol import (
    OPEN_TAGS,
    Role,
    Turn,
    committed_answer,
    parse_turn,
    render_input,
    render_transcript,
)
from longshort.engines.base import Engine, GenerationRequest, SamplingParams, render_chat
from longshort.errors import LongshortError
from longshort.training import rewards as R
from longshort.training.policy_decode import policy_generate
from longshort.training.rl_config import OTHER
from longshort.training.rl_scoring import RolloutScorer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.x


@dataclass
class _Dialogue:
    """One dialogue in flight, seen as the trained role's token sequence."""

    question: str
    next_role: Role = "long"
    turns: list[Turn] = field(default_factory=list)
    end_reason: str | None = None
    prompt_ids: list[int] | None = None
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    actual: str = ""   # the assistant-side text the sequence holds (prefix + raw policy turns)
    logical: str = ""  # the same text as inference would render it (repaired turns)
    mismatches: int = 0

    @property
    def long_turns(self) -> int:
        return sum(t.role == "long" for t in self.turns)


class DialogueRollout:
    """TRL ``rollout_func``: plays one dialogue per prompt (the problem text) with the trainer's
    model as `role` and `partner` (an `Engine`) as the other role. See the module docstring
    for what it returns."""

    def __init__(self, role: Role, partner: Engine, dialogue: CollabConfig | None = None, *,
                 temperature: float = 1.0, top_p: float = 1.0, problems: list[dict[str, Any]] | None = None,
                 scorer: RolloutScorer | None = None, dynamic_sampling: bool = False,
                 dynamic_max_rounds: int = 3, seed: int = 0):
        self.role, self.partner = role, partner
        self.config = dialogue or CollabConfig()
        self.temperature, self.top_p = temperature, top_p
        self.problems = list(problems or [])
        self._by_text = {p["problem"]: p for p in self.problems}
        self.scorer = scorer
        self.dynamic_sampling, self.dynamic_max_rounds, self.seed = dynamic_sampling, dynamic_max_rounds, seed
        if scorer is not None and not self.problems:
            raise LongshortError("a rollout that scores its dialogues needs the problems (gold answers)")
        self.filter_stats: dict[str, Any] | None = None  # set by the difficulty pre-pass (make_trainer)
        self.__name__ = f"dialogue_rollout_{role}"

    # -- helpers ---------------------------------------------------------------------------

    def _stops(self, role: Role) -> list[str]:
        return turn_stops(role, self.config)  # the solver's rule, so RL turns end as inference turns do

    def _limit(self, role: Role) -> int:
        return turn_limit(role, self.config)

    def _advance(self, d: _Dialogue, turn: Turn) -> None:
        """The ending rules of DESIGN §4 (as in `dialogue.collab`)."""
        d.turns.append(turn)
        role, end = after_turn(turn, d.long_turns, self.config)
        if end is not None:
            d.end_reason = end
        else:
            d.next_role = role

    def _append_env(self, d: _Dialogue, tokenizer: Any, want: str) -> None:
        """Bring the sequence up to the assistant text `want` with environment tokens."""
        if want.startswith(d.actual):
            env = want[len(d.actual):]
        else:  # the policy's turn was repaired (or carried text past its stop): keep its raw tokens
            env = want[len(d.logical):] if want.startswith(d.logical) else want
            d.mismatches += 1
        if env:
            ids = tokenizer(env, add_special_tokens=False)["input_ids"]
            d.ids += ids
            d.mask += [0] * len(ids)
            d.logps += [0.0] * len(ids)
        d.actual = d.logical = want

    # -- steps -----------------------------------------------------------------------------

    def _policy_step(self, waiting: list[_Dialogue], model: Any, tokenizer: Any) -> None:
        role = self.role
        forced = OPEN_TAGS[role] if self.config.force_open_tag else ""
        seqs = []
        for d in waiting:
            messages, want = render_input(role, d.question, d.turns, open_tag=self.config.force_open_tag)
            if d.prompt_ids is None:
                d.prompt_ids = tokenizer(render_chat(tokenizer, messages, want),
                                         add_special_tokens=False)["input_ids"]
                d.actual = d.logical = want
            else:
                self._append_env(d, tokenizer, want)
            seqs.append(d.prompt_ids + d.ids)
        gens = policy_generate(model, tokenizer, seqs, max_new_tokens=self._limit(role), stops=self._stops(role),
                               temperature=self.temperature, top_p=self.top_p)
        for d, g in zip(waiting, gens, strict=True):
            d.ids += g.token_ids
            d.mask += [1] * len(g.token_ids)
            d.logps += g.logprobs
            turn = parse_turn(role, forced + g.text, stop=g.stop, finish_reason=g.finish_reason,
                              tokens=len(g.token_ids))
            before = d.actual
            d.actual = before + g.decoded
            d.logical = render_transcript(d.turns + [turn])
            self._advance(d, turn)

    def _partner_step(self, waiting: list[_Dialogue]) -> None:
        role = OTHER[self.role]
        forced = OPEN_TAGS[role] if self.config.force_open_tag else ""
        requests = []
        for d in waiting:
            messages, prefix = render_input(role, d.question, d.turns, open_tag=self.config.force_open_tag)
            params = SamplingParams(temperature=self.config.temperature, top_p=self.config.top_p,
                                    max_new_tokens=self._limit(role), stop=self._stops(role), n=1)
            requests.append(GenerationRequest(messages=messages, assistant_prefix=prefix, params=params))
        results = self.partner.generate(requests)
        if len(results) != len(requests):
            raise LongshortError(f"partner engine returned {len(results)} results for {len(requests)} requests")
        for d, res in zip(waiting, results, strict=True):
            c = res.completions[0]
            self._advance(d, parse_turn(role, forced + c.text, stop=c.stop, finish_reason=c.finish_reason,
                                        tokens=c.num_tokens))

    # -- TRL entry point ---------------------------------------------------------------------

    def play(self, questions: list[str], model: Any, tokenizer: Any) -> dict[str, Any]:
        """Play one dialogue per question; return TRL's rollout dict (see module docstring)."""
        dialogues = [_Dialogue(question=q) for q in questions]
        while True:
            active = [d for d in dialogues if d.end_reason is None]
            if not active:
                break
            for role in ("long", "short"):
                waiting = [d for d in active if d.end_reason is None and d.next_role == role]
                if not waiting:
                    continue
                if role == self.role:
                    self._policy_step(waiting, model, tokenizer)
                else:
                    self._partner_step(waiting)
        eos = tokenizer.eos_token_id
        out: dict[str, list] = {k: [] for k in (
            "prompt_ids", "completion_ids", "logprobs", "env_mask", "final_answer", "finished", "truncated",
            "turns", "trained_role", "dialogue_tokens", "role_tokens", "tokens_long", "tokens_short", "num_turns",
            "end_reason", "context_mismatches")}
        for d in dialogues:
            last = d.turns[-1]
            truncated = d.end_reason == "token_limit"
            if d.prompt_ids is None:  # the dialogue ended before the trained role spoke
                messages, prefix = render_input(self.role, d.question, d.turns)
                d.prompt_ids = tokenizer(render_chat(tokenizer, messages, prefix),
                                         add_special_tokens=False)["input_ids"]
            elif not (truncated and last.role == self.role):
                # the partner's last turn (or the repaired tags of the policy's last turn) as environment
                # tokens; a policy turn cut at its limit ends the completion with its own tokens, as an
                # ordinary truncated completion does in TRL
                self._append_env(d, tokenizer, render_transcript(d.turns))
            if truncated and not d.ids:
                # the partner's turn was cut before the trained role spoke: TRL needs at least one
                # completion token, so one environment token (a newline, never EOS) stands in, and the
                # dialogue still reaches TRL as truncated
                nl = tokenizer("\n", add_special_tokens=False)["input_ids"] or [tokenizer.pad_token_id or 0]
                d.ids.append(nl[-1])
                d.mask.append(0)
                d.logps.append(0.0)
            if not truncated:
                # a dialogue that ended by the rules (final answer, max_turns) terminates with EOS; one
                # cut at a token limit does not, so TRL counts it as truncated (`completions/clipped_ratio`,
                # `mask_truncated_completions`)
                d.ids.append(eos)
                d.mask.append(0)
                d.logps.append(0.0)
            tokens = {r: sum(t.tokens for t in d.turns if t.role == r) for r in ("long", "short")}
            out["prompt_ids"].append(d.prompt_ids)
            out["completion_ids"].append(d.ids)
            out["logprobs"].append(d.logps)
            out["env_mask"].append(d.mask)
            # what RL pays for: only an answer boxed in a short turn that closed with </answer> by itself
            out["final_answer"].append(committed_answer(d.turns))
            out["finished"].append(bool(last.final and last.finish_reason != "length"))
            out["truncated"].append(truncated)
            out["turns"].append([{"role": t.role, "text": t.text, "tokens": t.tokens, "flags": list(t.flags),
                                  "finish_reason": t.finish_reason, "final": t.final} for t in d.turns])
            out["trained_role"].append(self.role)
            out["dialogue_tokens"].append(tokens["long"] + tokens["short"])
            out["role_tokens"].append(tokens[self.role])
            out["tokens_long"].append(tokens["long"])
            out["tokens_short"].append(tokens["short"])
            out["num_turns"].append(len(d.turns))
            out["end_reason"].append(d.end_reason)
            out["context_mismatches"].append(d.mismatches)
        return out

    def _rows(self, questions: list[str]) -> list[dict[str, Any]]:
        rows = []
        for q in questions:
            if q not in self._by_text:
                raise LongshortError(f"the rollout was given a prompt that is not one of its problems: {q[:60]!r}")
            rows.append(self._by_text[q])
        return rows

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from trl.models import unwrap_model_for_generation

        questions = [R.completion_text(p) for p in prompts]
        training = trainer.model.training
        mode = "train" if training else "eval"
        metrics = trainer._metrics[mode]
        group = trainer.num_generations if training else trainer.num_generations_eval
        tok = trainer.processing_class
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
                                         ) as model:
            out = self.play(questions, model, tok)
            if self.scorer is not None:
                rows = self._rows(questions)
                parts = self.scorer.score(out, rows, tok, trainer_state=trainer.state)
                if training and self.dynamic_sampling:
                    stats = self._fill_groups(out, rows, parts, group, model, tok, trainer.state)
                    for key, value in stats.items():
                        metrics[f"dynamic/{key}"].append(float(value))
                out["reward_parts"] = parts
                # the problems actually played (dynamic sampling may have replaced some): the rewards read
                # these columns, which TRL merges over the dataset's
                for key in ("answer", "choices", "id"):
                    out[key] = [r.get(key) if key != "answer" else str(r["answer"]) for r in rows]
        n = max(1, len(out["completion_ids"]))
        for key, values in (("tokens_long", out["tokens_long"]), ("tokens_short", out["tokens_short"]),
                            ("tokens_total", out["dialogue_tokens"]), ("turns", out["num_turns"]),
                            ("finished", out["finished"]), ("truncated", out["truncated"]),
                            ("committed", [a is not None for a in out["final_answer"]]),
                            ("context_mismatches", out["context_mismatches"])):
            metrics[f"dialogue/{key}"].append(sum(float(v) for v in values) / n)
        own = [t for ts in out["turns"] for t in ts if t["role"] == self.role]
        metrics["dialogue/format_violation_rate"].append(
            sum(not R.turn_well_formed(t) for t in own) / len(own) if own else 0.0)
        return out

    # -- dynamic sampling --------------------------------------------------------------------

    def _fill_groups(self, out: dict[str, list], rows: list[dict[str, Any]], parts: list[list[Any]], group: int,
                     model: Any, tokenizer: Any, state: Any) -> dict[str, int]:
        """DAPO's dynamic sampling, in place: replace each group (the `group` dialogues of one
        problem) whose rewards are all equal with the group of a freshly drawn problem that has
        reward variance. Each round plays at most one batch of new problems, drawn without
        replacement from the problems not in this step (seeded by the seed and the step); rounds
        stop when every group carries signal, the pool is spent or `dynamic_max_rounds` ran.
        Returns counts for the logs."""
        n = len(rows)
        groups = n // group
        if n % group or any(rows[g * group + i] is not rows[g * group] for g in range(groups)
                            for i in range(group)):
            return {"skipped": 1}  # not whole groups of one problem: nothing to compare
        signal = [self.scorer.has_signal(parts[g * group:(g + 1) * group]) for g in range(groups)]
        stats = {"zero_std_groups": groups - sum(signal), "resampled_problems": 0, "rounds": 0,
                 "dialogues_played": n}
        rng = random.Random(f"{self.seed}/{getattr(state, 'global_step', 0)}")
        in_step = {str(r["id"]) for r in rows}
        pool = [p for p in self.problems if str(p["id"]) not in in_step]
        rng.shuffle(pool)
        played, found = groups, sum(signal)
        for _ in range(self.dynamic_max_rounds):
            missing = [g for g in range(groups) if not signal[g]]
            if not missing or not pool:
                break
            rate = found / played
            k = min(len(pool), groups, math.ceil(len(missing) / max(rate, 0.25)))
            draw, pool = pool[:k], pool[k:]
            new_rows = [p for p in draw for _ in range(group)]
            new = self.play([p["problem"] for p in new_rows], model, tokenizer)
            new_parts = self.scorer.score(new, new_rows, tokenizer, trainer_state=state)
            stats["rounds"] += 1
            stats["resampled_problems"] += k
            stats["dialogues_played"] += len(new_rows)
            played += k
            for h in range(k):
                block = slice(h * group, (h + 1) * group)
                if not self.scorer.has_signal(new_parts[block]):
                    continue
                found += 1
                if missing:
                    target = slice(missing[0] * group, (missing[0] + 1) * group)
                    signal[missing.pop(0)] = True
                    for key in out:
                        out[key][target] = new[key][block]
                    rows[target] = new_rows[block]
                    parts[target] = new_parts[block]
        stats["signal_groups"] = sum(signal)
        return stats
