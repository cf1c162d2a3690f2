"""The multi-turn RL run's settings (`RLRunConfig`), beside the loop that runs them (`training.rl`).

Every field states its default and why; `longshort rl` and the pipeline's `rl` section map onto
these fields one to one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from longshort.dialogue.collab import CollabConfig
from longshort.dialogue.protocol import Role
from longshort.training import rewards as R
from longshort.training.common import (
    HUB_HELP,
    HUB_ID_HELP,
    MODEL_INIT_HELP,
    PRECISION_HELP,
    InitKwargs,
    Precision,
)
from longshort.training.lm_head import COMPACT_HEAD_HELP

OTHER: dict[str, Role] = {"long": "short", "short": "long"}


def generation_batch_problem(batch_size: int, grad_accum: int, num_generations: int) -> str | None:
    """Why these settings cannot form GRPO groups (None when they can): TRL generates
    batch_size x grad_accum dialogues per device at once (``steps_per_generation`` =
    grad_accum), which must hold whole groups of num_generations, since GRPO compares the
    dialogues of one problem."""
    if (batch_size * grad_accum) % num_generations:
        return (f"batch_size x grad_accum ({batch_size} x {grad_accum} = {batch_size * grad_accum} dialogues "
                f"generated together) must be a multiple of num_generations ({num_generations}): GRPO compares "
                "the dialogues of one problem")
    return None


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
    batch_size: int = Field(32, ge=1, description="dialogues per device per forward pass (TRL's "
                            "per_device_train_batch_size); batch_size x grad_accum dialogues are generated together "
                            "and make one optimizer step, a multiple of num_generations: 32 = 8 problems x 4, so a "
                            "step averages over enough problems to carry signal. On CPU, 4 x 8 holds a third of "
                            "the memory of 32 x 1")
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
    partner_server: Literal["none", "managed"] = Field(
        "none", description="managed: at the start of each iteration longshort starts a server for that "
        "iteration's frozen partner (`longshort serve`, or partner_server_command), plays the partner through "
        "it and stops it when the iteration ends, so every iteration gets the newly trained partner; none: "
        "in-process partner, or the fixed server of partner_base_url")
    partner_server_command: str | list[str] | None = Field(
        None, description="with partner_server: managed, the command that serves the partner, run per "
        "iteration without a shell, e.g. 'vllm serve {model} --port {port}' (a string split like a shell "
        "does, or a list of arguments); placeholders {model} (the "
        "partner's spec or directory), {port} (a free port chosen by longshort), {host}, {role}, {iteration}, "
        "{python}, {local_rank}; None = longshort serve on the partner")
    partner_server_timeout: float = Field(600.0, gt=0, description="seconds a managed partner server may take to "
                                          "answer GET /v1/models; 600 covers a large model's load and vLLM's "
                                          "compilation")
    lora: bool = Field(False, description="train LoRA adapters (merged into the saved model) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (2 * r)")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (resume point)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept per iteration")
    logging_steps: int = Field(1, ge=1, description="log rewards/accuracy/tokens every N steps (1: RL steps are slow)")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory "
                                         "on long dialogues for about a third more compute (the CPU recipes use it)")
    compact_head: bool | None = Field(None, description=COMPACT_HEAD_HELP)
    report_to: str = Field("tensorboard", description="tensorboard (default), wandb, 'tensorboard,wandb' or none")
    resume: bool = Field(False, description="skip finished iterations and continue the current one from its newest "
                         "checkpoint")
    skip_bad: bool = Field(False, description="skip and count malformed problem records instead of stopping")
    seed: int = Field(0, description="seed of data order and sampling")
    trainer: dict[str, Any] = Field(default_factory=dict, description="more TRL GRPOConfig arguments, passed as "
                                    "they are (e.g. {weight_decay: 0.01, loss_type: dr_grpo}); a key GRPOConfig "
                                    "lacks, or one a field here sets, is refused before a model loads")
    model_init_kwargs: InitKwargs = Field(None, description=MODEL_INIT_HELP + "; the "
                                              "trained role only (the partner takes `partner_engine_kwargs`)")
    push_to_hub: bool = Field(False, description=HUB_HELP + "; each trained role's final model goes to "
                              "<hub_model_id>-long / <hub_model_id>-short")
    hub_model_id: str | None = Field(None, description=HUB_ID_HELP + "; the role is appended")
    hub_private_repo: bool | None = Field(None, description="create the hub repositories private (None = the hub's default)")

    @model_validator(mode="after")
    def _whole_groups(self) -> RLRunConfig:
        why = generation_batch_problem(self.batch_size, self.grad_accum, self.num_generations)
        if why:
            raise ValueError(why)
        return self

    def schedule(self) -> list[Role]:
        """The role trained in each iteration: first, other, first, ..."""
        return [self.first if k % 2 == 0 else OTHER[self.first] for k in range(self.iterations)]
