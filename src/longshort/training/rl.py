"""Synergizing multi-turn RL of the long/short pair (DESIGN §6) on TRL's `GRPOTrainer`.

One role is trained while its partner is frozen; then they swap ("asynchronous" optimisation):
iteration k trains ``first`` when k is even, the other role when k is odd, and saves the result
to ``OUT/iter{k}_{role}/`` (a normal transformers directory), which becomes the partner of the
next iteration.

The rollout (`training.rollout.DialogueRollout`, passed to TRL as ``rollout_func``) plays whole
dialogues; a dialogue seen from the trained role is one token sequence in its tokenizer, the
partner's turns being environment tokens (``env_mask = 0``). Its module docstring lists what it
returns.

The pieces, one topic a file: `training.rl_config` (`RLRunConfig`), `training.rl_problems`
(problems file, dataset, difficulty pre-pass), `training.policy_decode` (the policy's decoding
loop), `training.rollout` (`DialogueRollout`), `training.rl_scoring` (`RolloutScorer`, the default
rewards), `training.partner_server` (the per-iteration partner server of ``partner_server:
managed``) and this module (partner, trainer, the alternating loop). Their public names are
re-exported here, so `from longshort.training.rl import ...` keeps working.

Signal (DAPO): the rollout scores its dialogues itself (`RolloutScorer`) and, with
``dynamic_sampling``, replaces problems whose group of dialogues got identical rewards (zero
advantage) by freshly drawn ones; ``problem_filter: intermediate`` keeps, before an iteration,
the problems the starting pair solves sometimes but not always (`solve_rates`,
`keep_intermediate`).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from longshort.dialogue.protocol import Role
from longshort.engines.base import Engine
from longshort.errors import LongshortError
from longshort.io import write_json_atomic
from longshort.rundir import environment_manifest
from longshort.training.common import (
    barrier,
    check_hub,
    check_model_spec,
    heap_trim_callback,
    hub_repo_id,
    is_finished,
    is_main_process,
    last_checkpoint,
    load_for_training,
    push_finished,
    shared_arguments,
    trainer_arguments,
    write_done_marker,
)
from longshort.training.lm_head import trainer_class
from longshort.training.partner_server import PartnerServer, check_partner_server, managed_partner
from longshort.training.policy_decode import PolicyTurn, policy_generate
from longshort.training.rl_config import OTHER, RLRunConfig, generation_batch_problem
from longshort.training.rl_problems import keep_intermediate, load_problems, problems_dataset, solve_rates
from longshort.training.rl_scoring import RolloutScorer, reward_functions
from longshort.training.rollout import DialogueRollout
from longshort.training.sft import save_final

log = logging.getLogger(__name__)


def make_partner(spec: str, config: RLRunConfig, served: PartnerServer | None = None) -> Engine:
    """The frozen partner: in-process transformers engine, the OpenAI-compatible server of
    ``partner_base_url``, or the iteration's managed server `served` (``partner_server: managed``)."""
    from longshort.engines import make_engine

    if served is not None:  # it serves `spec`, a local model: render with its own tokenizer (engines.render_chat)
        kwargs = {"tokenizer": spec, **config.partner_engine_kwargs}
        return make_engine(served.model_name or spec, "openai", base_url=served.base_url, **kwargs)
    if config.partner_base_url:
        return make_engine(spec, "openai", base_url=config.partner_base_url, **config.partner_engine_kwargs)
    check_model_spec(spec, what="partner model")
    kwargs = dict(config.partner_engine_kwargs)
    if "device" not in kwargs:
        import torch

        if torch.cuda.is_available():  # under accelerate launch: this process's own GPU
            kwargs["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return make_engine(spec, "transformers", **kwargs)


def grpo_arguments(config: RLRunConfig, ckpt_dir: str | Path, reward_weights: list[float] | None) -> dict[str, Any]:
    """TRL `GRPOConfig` keyword arguments: ours, then `config.trainer` (checked, see
    `common.trainer_arguments`). Pure: `run_rl` calls it before loading any model, so a bad
    `trainer:` key fails at once."""
    from trl import GRPOConfig

    turns = config.dialogue.max_turns
    return trainer_arguments(GRPOConfig, dict(
        output_dir=str(ckpt_dir),
        **shared_arguments(config),
        num_generations=config.num_generations,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler_type,
        beta=config.beta,
        epsilon=config.epsilon,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_length=turns * (config.dialogue.max_new_tokens_long + config.dialogue.max_new_tokens_short),
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=reward_weights,
        log_completions=False,
    ), config.trainer)


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

    why = generation_batch_problem(config.batch_size, config.grad_accum, config.num_generations)
    if why:
        raise LongshortError(why)
    funcs = reward_funcs if reward_funcs is not None else reward_functions(config.rewards)
    weights = reward_weights if reward_weights is not None else (
        config.rewards.weights() if reward_funcs is None else None)
    scorer = RolloutScorer(funcs, weights, metrics={"correctness_reward": "accuracy"} if reward_funcs is None else {})
    args = GRPOConfig(**grpo_arguments(config, ckpt_dir, scorer.weights))
    model, tok = load_for_training(policy_spec, what=f"{role} model", init_kwargs=config.model_init_kwargs)
    rollout_args = dict(temperature=config.temperature, top_p=config.top_p, scorer=scorer,
                        dynamic_sampling=config.dynamic_sampling, dynamic_max_rounds=config.dynamic_max_rounds,
                        seed=config.seed)
    filter_stats = None
    if config.problem_filter == "intermediate":
        problems, filter_stats = _filter_problems(config, role, partner, ckpt_dir, problems, model, tok)
    rollout = DialogueRollout(role, partner, config.dialogue, problems=problems, **rollout_args)
    rollout.filter_stats = filter_stats
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    cls = trainer_class(GRPOTrainer, config.compact_head, args.device.type)
    return cls(model=model, reward_funcs=scorer.readers(), args=args,
               train_dataset=problems_dataset(problems), processing_class=tok, rollout_func=rollout,
               peft_config=peft_config, callbacks=[heap_trim_callback()])


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
        rates = solve_rates(probe, problems, model, tok, samples=samples,
                            batch_dialogues=config.batch_size * config.grad_accum)
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
    check_partner_server(config)
    if config.partner_base_url and config.iterations > 1:
        raise LongshortError("--partner-base-url serves one fixed partner, so it allows one iteration per run "
                             "(--iterations 1); --partner-server managed serves each iteration's partner")
    problems = load_problems(config.data, skip_bad=config.skip_bad)
    grpo_arguments(config, out, None)  # a bad `trainer:` key fails here, before any model loads
    trained = tuple(dict.fromkeys(schedule))
    check_hub(config, tuple(f"-{role}" for role in trained))
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
        # partner_server: managed: this iteration's partner on its own server, stopped when the iteration ends
        with managed_partner(config, current[OTHER[role]], iteration=k, role=OTHER[role], log_dir=it_dir) as served:
            partner = make_partner(current[OTHER[role]], config, served)
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
                               "partner_server": served.describe() if served else None,
                               "problem_filter": trainer.rollout_func.filter_stats}
                    write_json_atomic(it_dir / "metrics.json", {"metrics": metrics,
                                                                "log_history": trainer.state.log_history})
                    write_done_marker(it_dir, {"stage": "rl", "iteration": k, "role": role, "metrics": metrics,
                                               "config": config.model_dump(),
                                               "manifest": environment_manifest(config.seed)})
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
        if config.push_to_hub:
            for role in trained:
                push_finished(current[role], hub_repo_id(config, f"-{role}"), private=config.hub_private_repo)
    return str(out)


__all__ = ["RLRunConfig", "DialogueRollout", "PolicyTurn", "RolloutScorer", "policy_generate", "run_rl",
           "make_trainer", "make_partner", "load_problems", "problems_dataset", "reward_functions", "solve_rates",
           "keep_intermediate", "OTHER"]
