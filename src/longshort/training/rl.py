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
  role's tokenizer (environment tokens, ``env_mask = 0``), then EOS (environment),
- ``logprobs``: the sampling log-probabilities of the policy tokens (0.0 on environment tokens).

The policy's turns are sampled by our own small decoding loop on exactly those token ids (so
training sees the context the policy sampled in, not a re-tokenisation of its text); the
partner's turns come from an `Engine` (in-process transformers, or any OpenAI-compatible server
via ``partner_base_url``), which tokenises with its own tokenizer: the two models may have
different tokenizers. Extra fields (``final_answer``, ``turns``, ``trained_role``,
``dialogue_tokens``, ``role_tokens``, ...) reach the reward functions of
`longshort.training.rewards`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from longshort.dialogue.collab import CollabConfig, turn_limit, turn_stops
from longshort.dialogue.protocol import (
    OPEN_TAGS,
    Role,
    Turn,
    final_answer,
    parse_turn,
    render_input,
    render_transcript,
)
from longshort.engines.base import Engine, GenerationRequest, SamplingParams
from longshort.errors import InputError, LongshortError
from longshort.io import ensure_ids, read_jsonl, write_json_atomic
from longshort.training import rewards as R
from longshort.training.common import (
    Precision,
    barrier,
    check_model_spec,
    is_finished,
    is_main_process,
    last_checkpoint,
    load_for_training,
    manifest,
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
    batch_size: int = Field(8, ge=1, description="dialogues per device per optimizer step (a multiple of "
                            "num_generations): 8 = 2 problems x 4")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-6, gt=0, description="learning rate; 1e-6 is TRL's GRPO default for full-parameter RL")
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
    return ensure_ids(recs, prefix="p")


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


def _sample(logits, temperature: float, top_p: float):
    import torch

    logp = torch.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    nxt = torch.multinomial(probs, 1).squeeze(-1)
    return nxt, logp.gather(-1, nxt[:, None]).squeeze(-1)


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
                nxt, lp = _sample(logits, temperature, top_p)
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
                 temperature: float = 1.0, top_p: float = 1.0):
        self.role, self.partner = role, partner
        self.config = dialogue or CollabConfig()
        self.temperature, self.top_p = temperature, top_p
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
            "prompt_ids", "completion_ids", "logprobs", "env_mask", "final_answer", "finished", "turns",
            "trained_role", "dialogue_tokens", "role_tokens", "tokens_long", "tokens_short", "num_turns",
            "end_reason", "context_mismatches")}
        for d in dialogues:
            if d.prompt_ids is None:  # the dialogue ended before the trained role spoke
                messages, prefix = render_input(self.role, d.question, d.turns)
                d.prompt_ids = tokenizer(render_prompt(tokenizer, messages, prefix),
                                         add_special_tokens=False)["input_ids"]
            else:
                self._append_env(d, tokenizer, render_transcript(d.turns))
            d.ids.append(eos)
            d.mask.append(0)
            d.logps.append(0.0)
            tokens = {r: sum(t.tokens for t in d.turns if t.role == r) for r in ("long", "short")}
            last = d.turns[-1]
            out["prompt_ids"].append(d.prompt_ids)
            out["completion_ids"].append(d.ids)
            out["logprobs"].append(d.logps)
            out["env_mask"].append(d.mask)
            out["final_answer"].append(final_answer(d.turns))
            out["finished"].append(bool(last.final and last.finish_reason != "length"))
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

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from trl.models import unwrap_model_for_generation

        questions = [R.completion_text(p) for p in prompts]
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
                                         ) as model:
            out = self.play(questions, model, trainer.processing_class)
        mode = "train" if trainer.model.training else "eval"
        metrics = trainer._metrics[mode]
        n = max(1, len(questions))
        for key, values in (("tokens_long", out["tokens_long"]), ("tokens_short", out["tokens_short"]),
                            ("tokens_total", out["dialogue_tokens"]), ("turns", out["num_turns"]),
                            ("finished", out["finished"]), ("context_mismatches", out["context_mismatches"])):
            metrics[f"dialogue/{key}"].append(sum(float(v) for v in values) / n)
        own = [t for ts in out["turns"] for t in ts if t["role"] == self.role]
        metrics["dialogue/format_violation_rate"].append(
            sum(not R.turn_well_formed(t) for t in own) / len(own) if own else 0.0)
        return out


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
    """The TRL `GRPOTrainer` training `role` (initialised from `policy_spec`) against `partner`."""
    from trl import GRPOConfig, GRPOTrainer

    if config.batch_size % config.num_generations:
        raise LongshortError(f"batch_size ({config.batch_size}) must be a multiple of num_generations "
                             f"({config.num_generations})")
    model, tok = load_for_training(policy_spec, what=f"{role} model")
    rollout = DialogueRollout(role, partner, config.dialogue, temperature=config.temperature, top_p=config.top_p)
    funcs = reward_funcs if reward_funcs is not None else reward_functions(config.rewards)
    weights = reward_weights if reward_weights is not None else (
        config.rewards.weights() if reward_funcs is None else None)
    turns = config.dialogue.max_turns
    args = GRPOConfig(
        output_dir=str(ckpt_dir),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_generations=config.num_generations,
        learning_rate=config.lr,
        beta=config.beta,
        epsilon=config.epsilon,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_length=turns * (config.dialogue.max_new_tokens_long + config.dialogue.max_new_tokens_short),
        reward_weights=weights,
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
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=problems_dataset(problems),
                       processing_class=tok, rollout_func=rollout, peft_config=peft_config)


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
                metrics = {**result.metrics, "global_step": result.global_step, "wall_s": round(time.time() - started, 2), "resumed_from": ckpt,
                           "policy_init": current[role], "partner": current[OTHER[role]]}
                write_json_atomic(it_dir / "metrics.json", {"metrics": metrics,
                                                            "log_history": trainer.state.log_history})
                write_done_marker(it_dir, {"stage": "rl", "iteration": k, "role": role, "metrics": metrics,
                                           "config": config.model_dump(), "manifest": manifest(config.seed)})
            history.append({"iteration": k, "role": role, "dir": str(it_dir), "wall_s": metrics["wall_s"]
                            if is_main_process() else None})
        finally:
            partner.close()
            trainer = None
            gc.collect()
        current[role] = str(it_dir)
    if is_main_process():
        write_done_marker(out, {"stage": "rl", "final": current, "iterations": history,
                                "config": config.model_dump(), "manifest": manifest(config.seed)})
    return str(out)


__all__ = ["RLRunConfig", "DialogueRollout", "PolicyTurn", "policy_generate", "run_rl", "make_trainer",
           "load_problems", "problems_dataset", "reward_functions"]
