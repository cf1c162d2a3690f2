"""Synergizing multi-turn RL of the long/short pair (DESIGN §6) on TRL's `GRPOTrainer`.

One role is trained while its partner is frozen; then they swap ("asynchronous" optimisation):
iteration k trains ``first`` when k is even, the other role when k is odd, and saves the result
to ``OUT/iter{k}_{role}/`` (a normal transformers directory), which becomes the partner of the
next iteration.

The rollout (`DialogueRollout`, passed to TRL as ``rollout_func``) plays whole dialogues
(DESIGN §4, same ending rules as `longshort.dialogue.collab`). Following the continuation
design of docs/architecture.md, every role continues one transcript as its assistant message, so a
dialogue seen from the trained role is one token sequence in the trained role's tokenizer:

- ``prompt_ids``: the trained role's first input (chat template + transcript so far),
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

Signal (DAPO): the rollout scores its dialogues itself (`RolloutScorer`) and, with
``dynamic_sampling``, replaces problems whose group of dialogues got identical rewards (zero
advantage) by freshly drawn ones; ``problem_filter: intermediate`` keeps, before an iteration,
the problems the starting pair solves sometimes but not always (`solve_rates`,
`keep_intermediate`).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from longshort.dialogue.collab import CollabConfig, turn_limit, turn_stops
from longshort.dialogue.protocol import (
    OPEN_TAGS,
    Role,
    Turn,
    committed_answer,
    parse_turn,
    render_input,
    render_transcript,
)
from longshort.engines.base import Engine, GenerationRequest, SamplingParams
from longshort.engines.hf import sample_tokens
from longshort.errors import InputError, LongshortError
from longshort.io import ensure_ids, read_jsonl, write_json_atomic
from longshort.rundir import environment_manifest
from longshort.training import rewards as R
from longshort.training.common import (
    Precision,
    barrier,
    check_model_spec,
    is_finished,
    is_main_process,
    last_checkpoint,
    load_for_training,
    precision_flags,
    render_prompt,
    report_targets,
    write_done_marker,
)
from longshort.training.sft import save_final

log = logging.getLogger(__name__)
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.x

OTHER: dict[str, Role] = {"long": "short", "short": "long"}


class RLRunConfig(BaseModel):
    """A multi-turn RL run: K alternating iterations, each training one role against the frozen other."""

    long: str = Field(description="long-thought model to start from (spec or directory, e.g. the SFT output)")
    short: str = Field(description="short-thought model to start from (spec or directory)")
    data: str = Field(description="problems JSONL with `problem` and `answer` (+ optional `id`, `choices`)")
    out: str = Field(description="output directory: iter{k}_{role}/ models, checkpoints/, logs")
    iterations: int = Field(2, ge=1, description="alternating iterations K; 2 = train each role once")
    first: Role = Field("long", description="role trained in iteration 0 (the long model speaks first)")
    max_steps: int = Field(-1, description="optimizer steps per iteration; -1 = `epochs` passes over the problems")
    epochs: float = Field(1.0, gt=0, description="passes over the problems per iteration when max_steps is -1")
    num_generations: int = Field(4, ge=2, description="dialogues per problem (the GRPO group); 4 keeps CPU runs small, "
                                 "8 is common on GPUs")
    batch_size: int = Field(32, ge=1, description="dialogues per device per optimizer step (a multiple of "
                            "num_generations): 32 = 8 problems x 4, so a step averages over enough problems "
                            "to carry signal")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-6, gt=0, description="learning rate; 1e-6 is TRL's GRPO default for full-parameter RL")
    lr_scheduler_type: Literal["constant", "linear", "cosine", "constant_with_warmup"] = Field(
        "constant", description="learning-rate schedule (TRL/transformers `lr_scheduler_type`); constant (as in "
        "DAPO) because a linear decay to 0 wastes the last steps of short RL runs")
    warmup: float = Field(0.0, ge=0, description="warmup: a ratio of total steps (<1) or a step count (with "
                          "constant_with_warmup or a decaying schedule); 0 = none")
    dynamic_sampling: bool = Field(True, description="DAPO's dynamic sampling: a problem whose dialogues all get "
                                   "the same reward (no advantage, no gradient) is replaced by freshly drawn "
                                   "problems until the step's groups carry signal or dynamic_max_rounds is spent")
    dynamic_max_rounds: int = Field(3, ge=0, description="extra rollout rounds per step for dynamic sampling, each "
                                    "at most one batch of new problems (3: bounds a step at 4x the rollouts; "
                                    "0 = only count the groups without signal)")
    problem_filter: Literal["none", "intermediate"] = Field(
        "none", description="intermediate: before each iteration, play filter_samples dialogues per problem with "
        "the starting pair and keep the problems whose solve rate is strictly between 0 and 1 (the ones GRPO can "
        "learn from); costs one pass over the problems")
    filter_samples: int = Field(0, ge=0, description="dialogues per problem of the difficulty pre-pass; 0 = "
                                "num_generations")
    mask_truncated_completions: bool = Field(False, description="TRL's option: leave dialogues cut at a token "
                                             "limit out of the loss (DAPO's overlong filtering); off, so cut "
                                             "dialogues still teach the roles to finish in time (they earn no "
                                             "correctness)")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the initial policy; 0 (TRL default) needs no "
                        "reference model copy")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clipping range of the importance ratio")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the trained role (1.0: explore the "
                               "policy's own distribution, as GRPO assumes)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass of the trained role's sampling (1.0 = none)")
    dialogue: CollabConfig = Field(default_factory=lambda: CollabConfig(max_new_tokens_long=512,
                                                                        max_new_tokens_short=256),
                                   description="dialogue rules and the partner's sampling (max_turns, token limits, "
                                   "temperature); token limits halved from solving to keep rollouts affordable")
    rewards: R.RewardConfig = Field(default_factory=R.RewardConfig, description="reward weights and length budget")
    partner_base_url: str | None = Field(None, description="serve the frozen partner from an OpenAI-compatible "
                                         "server (e.g. vllm serve) instead of in-process")
    partner_engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra engine arguments "
                                                  "for the partner (e.g. batch_size, timeout)")
    lora: bool = Field(False, description="train LoRA adapters (merged into the saved model) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (2 * r)")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (resume point)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept per iteration")
    logging_steps: int = Field(1, ge=1, description="log rewards/accuracy/tokens every N steps (1: RL steps are slow)")
    precision: Precision = Field("auto", description="auto = bf16 on a CUDA GPU that has it, else fp32")
    gradient_checkpointing: bool = Field(False, description="save memory on long dialogues (GPU runs)")
    report_to: str = Field("tensorboard", description="tensorboard (default), wandb, 'tensorboard,wandb' or none")
    resume: bool = Field(False, description="skip finished iterations and continue the current one from its newest "
                         "checkpoint")
    skip_bad: bool = Field(False, description="skip and count malformed problem records instead of stopping")
    seed: int = Field(0, description="seed of data order and sampling")

    @model_validator(mode="after")
    def _whole_groups(self) -> RLRunConfig:
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): GRPO compares the dialogues of one problem")
        return self

    def schedule(self) -> list[Role]:
        """The role trained in each iteration: first, other, first, ..."""
        return [self.first if k % 2 == 0 else OTHER[self.first] for k in range(self.iterations)]


# ----------------------------------------------------------------------------- data


def load_problems(path: str, *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Problems for RL: ``{id, problem, answer, choices?}``; `InputError` on bad or no records."""
    recs = read_jsonl(path, required=["problem", "answer"], skip_bad=skip_bad)
    if not recs:
        raise InputError("no problems (empty file)", path=path)
    for i, rec in enumerate(recs, start=1):
        if not isinstance(rec["problem"], str):
            raise InputError("expected a string", path=path, line=i, field="problem")
        ch = rec.get("choices")
        if ch is not None and not (isinstance(ch, list) and all(isinstance(c, str) for c in ch)):
            raise InputError("expected a list of strings", path=path, line=i, field="choices")
    recs = ensure_ids(recs, prefix="p")
    seen: dict[str, tuple[int, str]] = {}
    for i, rec in enumerate(recs, start=1):  # the rollout finds a problem's gold answer by its text
        first = seen.setdefault(rec["problem"], (i, str(rec["answer"])))
        if first[1] != str(rec["answer"]):
            raise InputError(f"the same problem text as line {first[0]} with another answer", path=path, line=i,
                             field="answer")
    return recs


def problems_dataset(problems: list[dict[str, Any]]):
    """The GRPO dataset: ``prompt`` = the problem text (the rollout renders it per role),
    ``answer``/``choices``/``id`` for the rewards."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [p["problem"] for p in problems],
        "answer": [str(p["answer"]) for p in problems],
        "choices": [p.get("choices") for p in problems],
        "id": [str(p["id"]) for p in problems],
    })


# ----------------------------------------------------------------------------- policy decoding


@dataclass
class PolicyTurn:
    """One turn sampled from the policy: its tokens (all kept in the sequence), their sampling
    logprobs, the decoded text, the text before the stop, the stop hit and the finish reason."""

    token_ids: list[int]
    logprobs: list[float]
    decoded: str
    text: str
    stop: str | None
    finish_reason: str


def policy_generate(model: Any, tokenizer: Any, sequences: list[list[int]], *, max_new_tokens: int,
                    stops: list[str], temperature: float = 1.0, top_p: float = 1.0) -> list[PolicyTurn]:
    """Sample one turn for each token sequence (left-padded batch, KV cache), stopping a row at
    EOS, at the first stop string, or after `max_new_tokens`. Logprobs are those of the
    sampling distribution (logits / temperature), as TRL computes them for the loss."""
    import inspect

    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is not None:
            eos.update(src if isinstance(src, (list, tuple)) else [src])
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    B, L = len(sequences), max(len(s) for s in sequences)
    # The engine's sampler (one home for sampling): counter-based uniforms per row, seeded from
    # torch's global generator so that `torch.manual_seed` (the trainer's seed) fixes the rollout.
    seeds = torch.randint(0, 2**62, (B,), dtype=torch.int64)
    temps = torch.full((B,), float(temperature))
    top_ps = torch.full((B,), float(top_p))
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, L - len(s):] = torch.tensor(s)
        mask[i, L - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    window = 4 * max((len(s) for s in stops), default=0) + 8
    toks: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    out: list[PolicyTurn | None] = [None] * B
    specials = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)

    def clean(text: str) -> str:
        for s in specials:
            text = text.replace(s, "")
        return text

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           logits_to_keep=1, **{cache_kw: cache}).logits[:, -1, :].float()
            last = pos[:, -1]
            for step in range(max_new_tokens):
                nxt, lp = sample_tokens(logits, temps.to(logits.device), top_ps.to(logits.device),
                                        seeds.to(logits.device), step, want_logprobs=True)
                for r, (t, p) in enumerate(zip(nxt.tolist(), lp.tolist(), strict=True)):
                    if out[r] is not None:
                        continue
                    toks[r].append(t)
                    lps[r].append(p)
                    done = None
                    if t in eos:
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        done = PolicyTurn(toks[r], lps[r], decoded,
                                          clean(tokenizer.decode(toks[r][:-1], skip_special_tokens=False)),
                                          None, "stop")
                    elif stops and any(s in tokenizer.decode(toks[r][-window:], skip_special_tokens=False)
                                       for s in stops):
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        at, hit = min((decoded.find(s), s) for s in stops if s in decoded)
                        done = PolicyTurn(toks[r], lps[r], decoded, clean(decoded[:at]), hit, "stop")
                    elif step + 1 >= max_new_tokens:
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        done = PolicyTurn(toks[r], lps[r], decoded, clean(decoded), None, "length")
                    out[r] = done
                if all(o is not None for o in out):
                    break
                mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
                last = last + 1
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                               use_cache=True, **{cache_kw: cache}).logits[:, -1, :].float()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the rollout


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
        if turn.finish_reason == "length":
            d.end_reason = "token_limit"
        elif turn.role == "long":
            d.next_role = "short"
        elif turn.final:
            d.end_reason = "answer"
        elif d.long_turns >= self.config.max_turns:
            d.end_reason = "max_turns"
        else:
            d.next_role = "long"

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
                d.prompt_ids = tokenizer(render_prompt(tokenizer, messages, want),
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
                d.prompt_ids = tokenizer(render_prompt(tokenizer, messages, prefix),
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


# ----------------------------------------------------------------------------- scoring


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_TRL_KEYS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")


class RolloutScorer:
    """The trainer's reward functions, run once per dialogue inside the rollout.

    Dynamic sampling must know every group's rewards before TRL sees the batch, so the rollout
    calls the reward functions itself, with the keyword arguments TRL would pass them (the
    decoded ``completions``, ``completion_ids``, the problem's ``answer``/``choices``/``id``, the
    rollout's extra fields, ``trainer_state``), and returns the values as the extra field
    ``reward_parts``. The trainer is given `readers()`: functions of the same names (so TRL logs
    ``rewards/<name>/mean`` as before) that return those values, so TRL's advantages are computed
    on exactly the rewards the selection saw. `metrics` maps a reward's name to a metric logged as
    its batch mean (``correctness_reward`` -> ``accuracy``)."""

    def __init__(self, funcs: list, weights: list[float] | None = None, *, metrics: dict[str, str] | None = None):
        self.funcs = list(funcs)
        self.names = [getattr(f, "__name__", type(f).__name__) for f in self.funcs]
        self.weights = [1.0] * len(self.funcs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.funcs):
            raise LongshortError(f"{len(self.weights)} reward weights for {len(self.funcs)} reward functions")
        self.metrics = dict(metrics or {})

    def score(self, out: dict[str, list], rows: list[dict[str, Any]], tokenizer: Any, *,
              trainer_state: Any = None) -> list[list[Any]]:
        """Per dialogue, the value of each reward function (None where a function abstains)."""
        ids = out["completion_ids"]
        kwargs = {k: v for k, v in out.items() if k not in _TRL_KEYS and k != "reward_parts"}
        kwargs.update(answer=[str(r["answer"]) for r in rows], choices=[r.get("choices") for r in rows],
                      id=[str(r.get("id")) for r in rows])
        completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
        columns = []
        for f, name in zip(self.funcs, self.names, strict=True):
            values = list(f(prompts=[r["problem"] for r in rows], completions=completions, completion_ids=ids,
                            trainer_state=trainer_state, log_extra=_ignore, log_metric=_ignore, **kwargs))
            if len(values) != len(ids):
                raise LongshortError(f"reward '{name}' returned {len(values)} values for {len(ids)} dialogues")
            columns.append(values)
        return [list(v) for v in zip(*columns, strict=True)] if columns else [[] for _ in ids]

    def total(self, parts: list[Any]) -> float | None:
        """The weighted sum GRPO normalises (None-valued parts left out, as TRL's nansum does)."""
        vals = [w * float(v) for w, v in zip(self.weights, parts, strict=True)
                if v is not None and not math.isnan(float(v))]
        return sum(vals) if vals else None

    def has_signal(self, group_parts: list[list[Any]]) -> bool:
        """A group carries signal when its total rewards are not all equal (a non-zero advantage)."""
        totals = [t for t in (self.total(p) for p in group_parts) if t is not None]
        return len(totals) > 1 and max(totals) - min(totals) > 1e-6

    def readers(self) -> list:
        """The reward functions the trainer calls: they return the values the rollout computed."""
        return [_reader(j, name, self.metrics.get(name)) for j, name in enumerate(self.names)]


def _reader(index: int, name: str, metric: str | None):
    def read(completions, reward_parts=None, log_metric=None, **kwargs):
        if reward_parts is None:
            raise LongshortError(f"reward '{name}' reads the rollout's `reward_parts`, which are missing")
        values = [parts[index] for parts in reward_parts]
        known = [float(v) for v in values if v is not None]
        if metric and log_metric is not None and known:
            log_metric(metric, sum(known) / len(known))
        return values

    read.__name__ = name
    return read


# ----------------------------------------------------------------------------- problem selection


def solve_rates(rollout: DialogueRollout, problems: list[dict[str, Any]], model: Any, tokenizer: Any, *,
                samples: int, batch_dialogues: int) -> dict[str, float]:
    """Each problem's solve rate under the rollout's pair: the share of `samples` dialogues whose
    committed answer (`protocol.committed_answer`) is right. Played `batch_dialogues` at a time."""
    per = max(1, batch_dialogues // samples)
    rates: dict[str, float] = {}
    for i in range(0, len(problems), per):
        chunk = problems[i:i + per]
        rows = [p for p in chunk for _ in range(samples)]
        out = rollout.play([p["problem"] for p in rows], model, tokenizer)
        right = R.correctness_reward([""] * len(rows), answer=[str(p["answer"]) for p in rows],
                                     final_answer=out["final_answer"], choices=[p.get("choices") for p in rows])
        for j, p in enumerate(chunk):
            rates[str(p["id"])] = sum(right[j * samples:(j + 1) * samples]) / samples
    return rates


def keep_intermediate(problems: list[dict[str, Any]], rates: dict[str, float], *, minimum: int,
                      seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The problems whose solve rate is strictly between 0 and 1; if fewer than `minimum` (one
    step's problems), topped up with others drawn at random (seeded), so a step can still form.

    >>> ps = [{"id": str(i)} for i in range(4)]
    >>> kept, counts = keep_intermediate(ps, {"0": 0.0, "1": 0.5, "2": 1.0, "3": 0.25}, minimum=1)
    >>> [p["id"] for p in kept], counts["unsolved"], counts["always_solved"]
    (['1', '3'], 1, 1)
    """
    mid = [p for p in problems if 0.0 < rates.get(str(p["id"]), 0.0) < 1.0]
    counts = {"problems": len(problems), "intermediate": len(mid),
              "unsolved": sum(rates.get(str(p["id"]), 0.0) == 0.0 for p in problems),
              "always_solved": sum(rates.get(str(p["id"]), 0.0) == 1.0 for p in problems), "topped_up": 0}
    if len(mid) < minimum:
        rest = [p for p in problems if p not in mid]
        random.Random(seed).shuffle(rest)
        extra = rest[:minimum - len(mid)]
        counts["topped_up"] = len(extra)
        chosen = {id(p) for p in mid + extra}
        mid = [p for p in problems if id(p) in chosen]
    counts["kept"] = len(mid)
    return mid, counts


# ----------------------------------------------------------------------------- trainer


def reward_functions(config: R.RewardConfig) -> list:
    """The rewards of `rewards.reward_functions`, the correctness one also logging accuracy."""
    correctness, fmt, length = R.reward_functions(config)

    def correctness_reward(completions, **kwargs):
        values = correctness(completions, **kwargs)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and values:
            log_metric("accuracy", sum(values) / len(values))
        return values

    def format_reward(completions, **kwargs):
        return fmt(completions, **kwargs)

    def length_reward(completions, **kwargs):
        return length(completions, **kwargs)

    return [correctness_reward, format_reward, length_reward]


def make_partner(spec: str, config: RLRunConfig) -> Engine:
    """The frozen partner: in-process transformers engine, or the OpenAI-compatible server."""
    from longshort.engines import make_engine

    if config.partner_base_url:
        return make_engine(spec, "openai", base_url=config.partner_base_url, **config.partner_engine_kwargs)
    check_model_spec(spec, what="partner model")
    kwargs = dict(config.partner_engine_kwargs)
    if "device" not in kwargs:
        import torch

        if torch.cuda.is_available():  # under accelerate launch: this process's own GPU
            kwargs["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return make_engine(spec, "transformers", **kwargs)


def make_trainer(config: RLRunConfig, role: Role, policy_spec: str, partner: Engine, ckpt_dir: str | Path,
                 problems: list[dict[str, Any]], *, reward_funcs: list | None = None,
                 reward_weights: list[float] | None = None):
    """The TRL `GRPOTrainer` training `role` (initialised from `policy_spec`) against `partner`.

    The reward functions run inside the rollout (`RolloutScorer`, so that dynamic sampling can
    see each group's rewards); TRL gets readers of the same names. With ``problem_filter:
    intermediate`` the problems are first narrowed by `solve_rates` / `keep_intermediate` under the
    starting pair (cached in ``ckpt_dir/problem_filter.json`` for resumed runs); the counts are on
    ``trainer.rollout_func.filter_stats``."""
    from trl import GRPOConfig, GRPOTrainer

    if config.batch_size % config.num_generations:
        raise LongshortError(f"batch_size ({config.batch_size}) must be a multiple of num_generations "
                             f"({config.num_generations})")
    model, tok = load_for_training(policy_spec, what=f"{role} model")
    funcs = reward_funcs if reward_funcs is not None else reward_functions(config.rewards)
    weights = reward_weights if reward_weights is not None else (
        config.rewards.weights() if reward_funcs is None else None)
    scorer = RolloutScorer(funcs, weights, metrics={"correctness_reward": "accuracy"} if reward_funcs is None else {})
    rollout_args = dict(temperature=config.temperature, top_p=config.top_p, scorer=scorer,
                        dynamic_sampling=config.dynamic_sampling, dynamic_max_rounds=config.dynamic_max_rounds,
                        seed=config.seed)
    filter_stats = None
    if config.problem_filter == "intermediate":
        problems, filter_stats = _filter_problems(config, role, partner, ckpt_dir, problems, model, tok)
    rollout = DialogueRollout(role, partner, config.dialogue, problems=problems, **rollout_args)
    rollout.filter_stats = filter_stats
    turns = config.dialogue.max_turns
    args = GRPOConfig(
        output_dir=str(ckpt_dir),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_generations=config.num_generations,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup,
        beta=config.beta,
        epsilon=config.epsilon,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_length=turns * (config.dialogue.max_new_tokens_long + config.dialogue.max_new_tokens_short),
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=scorer.weights,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=report_targets(config.report_to),
        seed=config.seed,
        log_completions=False,
        **precision_flags(config.precision),
        gradient_checkpointing=config.gradient_checkpointing,  # TRL defaults to True; ours is explicit
    )
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    return GRPOTrainer(model=model, reward_funcs=scorer.readers(), args=args,
                       train_dataset=problems_dataset(problems), processing_class=tok, rollout_func=rollout,
                       peft_config=peft_config)


def _filter_problems(config: RLRunConfig, role: Role, partner: Engine, ckpt_dir: str | Path,
                     problems: list[dict[str, Any]], model: Any, tok: Any):
    """``problem_filter: intermediate``: solve rates under the starting pair, then `keep_intermediate`."""
    import torch

    cache = Path(ckpt_dir) / "problem_filter.json"
    samples = config.filter_samples or config.num_generations
    ids = [str(p["id"]) for p in problems]
    rates = None
    if cache.exists():
        import json

        saved = json.loads(cache.read_text())
        if saved.get("ids") == ids and saved.get("samples") == samples:
            rates = {str(k): float(v) for k, v in saved["rates"].items()}
    started = time.time()
    if rates is None:
        torch.manual_seed(config.seed)
        probe = DialogueRollout(role, partner, config.dialogue, temperature=config.temperature, top_p=config.top_p)
        rates = solve_rates(probe, problems, model, tok, samples=samples, batch_dialogues=config.batch_size)
        if is_main_process():
            write_json_atomic(cache, {"ids": ids, "samples": samples, "rates": rates})
    per_step = max(1, config.batch_size * config.grad_accum // config.num_generations)
    kept, counts = keep_intermediate(problems, rates, minimum=per_step, seed=config.seed)
    counts["samples"] = samples
    counts["wall_s"] = round(time.time() - started, 2)
    log.info("problem filter (%s role): %d of %d problems have a solve rate strictly between 0 and 1 "
             "(%d unsolved, %d always solved, %d topped up)", role, counts["intermediate"], counts["problems"],
             counts["unsolved"], counts["always_solved"], counts["topped_up"])
    return kept, counts


def run_rl(config: RLRunConfig, *, reward_funcs: list | None = None,
           reward_weights: list[float] | None = None) -> str:
    """Run the K alternating iterations; return `config.out`. ``OUT/iter{k}_{role}/`` holds each
    iteration's model, ``OUT/longshort_run.json`` the final pair. `reward_funcs` replaces the
    default rewards (library use, e.g. tests)."""
    out = Path(config.out)
    schedule = config.schedule()
    if config.partner_base_url and config.iterations > 1:
        raise LongshortError("--partner-base-url serves one fixed partner, so it allows one iteration per run "
                             "(--iterations 1); serve the new partner and start the next iteration with it")
    problems = load_problems(config.data, skip_bad=config.skip_bad)
    for spec, role in ((config.long, "long"), (config.short, "short")):
        if not (config.partner_base_url and role != schedule[0]):
            check_model_spec(spec, what=f"{role} model")
    if not config.resume:
        earlier = [p.name for p in out.glob("iter*_*") if p.is_dir()] + (
            ["checkpoints"] if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) else [])
        if earlier:
            raise LongshortError(f"{out} holds an earlier run ({', '.join(sorted(earlier))}); pass --resume to "
                                 "continue it or choose another --out")
    barrier()
    current: dict[str, str] = {"long": config.long, "short": config.short}
    history = []
    for k, role in enumerate(schedule):
        it_dir = out / f"iter{k}_{role}"
        if is_finished(it_dir):
            log.info("iteration %d (%s) already finished: %s", k, role, it_dir)
            current[role] = str(it_dir)
            history.append({"iteration": k, "role": role, "dir": str(it_dir), "skipped": True})
            continue
        ckpt_dir = out / "checkpoints" / f"iter{k}_{role}"
        ckpt = last_checkpoint(ckpt_dir) if config.resume else None
        partner = make_partner(current[OTHER[role]], config)
        started = time.time()
        try:
            trainer = make_trainer(config, role, current[role], partner, ckpt_dir, problems,
                                   reward_funcs=reward_funcs, reward_weights=reward_weights)
            result = trainer.train(resume_from_checkpoint=ckpt)
            save_final(trainer, it_dir, lora=config.lora)
            if is_main_process():
                metrics = {**result.metrics, "global_step": result.global_step,
                           "wall_s": round(time.time() - started, 2), "resumed_from": ckpt,
                           "policy_init": current[role], "partner": current[OTHER[role]],
                           "problem_filter": trainer.rollout_func.filter_stats}
                write_json_atomic(it_dir / "metrics.json", {"metrics": metrics,
                                                            "log_history": trainer.state.log_history})
                write_done_marker(it_dir, {"stage": "rl", "iteration": k, "role": role, "metrics": metrics,
                                           "config": config.model_dump(), "manifest": environment_manifest(config.seed)})
            history.append({"iteration": k, "role": role, "dir": str(it_dir), "wall_s": metrics["wall_s"]
                            if is_main_process() else None})
        finally:
            partner.close()
            trainer = None
            gc.collect()
        current[role] = str(it_dir)
    if is_main_process():
        write_done_marker(out, {"stage": "rl", "final": current, "iterations": history,
                                "config": config.model_dump(), "manifest": environment_manifest(config.seed)})
    return str(out)


__all__ = ["RLRunConfig", "DialogueRollout", "PolicyTurn", "RolloutScorer", "policy_generate", "run_rl",
           "make_trainer", "load_problems", "problems_dataset", "reward_functions", "solve_rates",
           "keep_intermediate"]
