"""Cold-start SFT of one role (DESIGN §6) on TRL's `SFTTrainer`.

Input: the SFT file written by `longshort.thoughts.coldstart` (docs/architecture.md), one record per
turn of the role: ``{id, role, problem, answer, prompt: [messages], assistant_prefix, completion}``.
Each record becomes one prompt-completion example:

- prompt = ``render_chat(tokenizer, prompt, assistant_prefix)`` (`longshort.engines.base`, the
  engines' own rendering): the chat template with the generation prompt, then
  ``assistant_prefix`` (the transcript so far, which the role continues); a ``<think>`` that the
  template opens itself is cut there, at inference as here,
- completion = the turn itself (tags included) + EOS,

tokenised separately and concatenated, exactly as the model sees them at inference (prompt
tokens, then generated tokens), with a ``completion_mask`` so TRL's ``completion_only_loss``
puts the loss on the turn only. Full-parameter training by default, LoRA optional (merged
into the saved model). Checkpoints go to ``OUT/checkpoints/``; ``resume`` continues from the
newest one; the final model (with tokenizer) is saved to ``OUT/`` as a normal transformers
directory that `longshort.models.load_model(OUT)` and every command accept.

Runs the same under ``accelerate launch --config_file configs/accelerate/{ddp,zero2,zero3}.yaml``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.engines.base import render_chat
from longshort.errors import InputError, LongshortError
from longshort.io import ReadStats, read_jsonl, write_json_atomic
from longshort.rundir import environment_manifest
from longshort.training.common import (
    HUB_HELP,
    HUB_ID_HELP,
    MODEL_INIT_HELP,
    PRECISION_HELP,
    InitKwargs,
    Precision,
    barrier,
    check_hub,
    heap_trim_callback,
    hub_repo_id,
    is_finished,
    is_main_process,
    last_checkpoint,
    load_for_training,
    push_finished,
    release_memory,
    shared_arguments,
    trainer_arguments,
    write_done_marker,
)
from longshort.training.lm_head import COMPACT_HEAD_HELP, trainer_class

log = logging.getLogger(__name__)


LR_FULL, LR_LORA = 1e-5, 2e-4  # SFT learning rates when none is given: full-parameter, LoRA


class SFTRunConfig(BaseModel):
    """One cold-start SFT run of one role."""

    role: Literal["long", "short"] = Field(description="which role's turns to learn; records of the other role are an error")
    data: str = Field(description="SFT JSONL written by `longshort coldstart` (one record per turn of the role)")
    model: str = Field(description="model spec to start from (smollm2-135m, tiny-random, a directory, a hub id)")
    out: str = Field(description="output directory: the final model, checkpoints/ and logs")
    max_steps: int = Field(-1, description="stop after this many optimizer steps; -1 = run `epochs` epochs")
    epochs: float = Field(2.0, gt=0, description="passes over the data when max_steps is -1; 2 fits small cold-start sets")
    lr: float | None = Field(None, gt=0, description=f"learning rate; None = {LR_FULL:g} full-parameter, "
                             f"{LR_LORA:g} LoRA (the usual choices)")
    batch_size: int = Field(4, ge=1, description="examples per device per step; 4 fits a 135M model on CPU")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps (effective batch = batch_size * grad_accum * devices)")
    max_length: int = Field(4096, ge=16, description="tokens per example (prompt + turn + EOS); longer examples are "
                                                     "dropped (never cut: a cut turn loses its closing tag and EOS), "
                                                     "counted in metrics.json and warned about")
    warmup: float = Field(0.03, ge=0, description="linear warmup: a ratio of total steps (<1) or a step count; 3% is usual")
    lora: bool = Field(False, description="train LoRA adapters instead of all weights (merged into the saved model)")
    lora_r: int = Field(16, ge=1, description="LoRA rank; 16 is the common default for 0.1B-8B models")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha; 2 * r as usual")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch")
    save_steps: int = Field(200, ge=1, description="save a checkpoint every N steps (resume point)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept; 2 = the newest plus one in case it is torn")
    logging_steps: int = Field(10, ge=1, description="log loss / lr every N steps")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: about a third "
                                         "more compute for much less memory (the CPU recipes use it)")
    compact_head: bool | None = Field(None, description=COMPACT_HEAD_HELP)
    report_to: str = Field("tensorboard", description="tensorboard (default), wandb, 'tensorboard,wandb' or none")
    resume: bool = Field(False, description="continue from the newest checkpoint in OUT/checkpoints (or skip if finished)")
    skip_bad: bool = Field(False, description="skip and count malformed records instead of stopping")
    seed: int = Field(0, description="seed of shuffling, init of LoRA weights and dropout")
    add_eos: bool = Field(True, description="end each turn with EOS: the turn ends the reply, even for backends without stop strings")
    trainer: dict[str, Any] = Field(default_factory=dict, description="more TRL SFTConfig arguments, passed as "
                                    "they are (e.g. {weight_decay: 0.01, lr_scheduler_type: cosine}); a key "
                                    "SFTConfig lacks, or one a field here sets, is refused before the model loads")
    model_init_kwargs: InitKwargs = Field(None, description=MODEL_INIT_HELP)
    push_to_hub: bool = Field(False, description=HUB_HELP)
    hub_model_id: str | None = Field(None, description=HUB_ID_HELP)
    hub_private_repo: bool | None = Field(None, description="create the hub repository private (None = the hub's default)")


def _messages(value: Any, path: str, line: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InputError("expected a non-empty list of chat messages", path=path, line=line, field="prompt")
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError("each message needs string 'role' and 'content'", path=path, line=line,
                             field="prompt")
    return value


def check_sft_record(rec: dict[str, Any], path: str, line: int) -> None:
    """Raise `InputError` (file, line, field) unless `rec` has the fields training reads: `prompt`
    (chat messages), `completion` (a string) and an optional string `assistant_prefix`."""
    _messages(rec.get("prompt"), path, line)
    if not isinstance(rec.get("completion"), str):
        raise InputError("expected a string", path=path, line=line, field="completion")
    if not isinstance(rec.get("assistant_prefix", ""), str):
        raise InputError("expected a string", path=path, line=line, field="assistant_prefix")


def load_sft_records(path: str, role: str, *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Read and validate an SFT file for `role`; raise `InputError` (file, line, field) on a bad
    record, or when no record is left."""
    stats = ReadStats()
    raw = read_jsonl(path, required=["prompt", "completion"], skip_bad=skip_bad, stats=stats)
    # file line of each record (exact unless --skip-bad dropped malformed lines before it)
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [i for i, text in enumerate(fh, start=1) if text.strip()] if not (stats.skipped or str(path).endswith(".gz")) else []
    records, other_roles = [], {}
    for idx, rec in enumerate(raw):
        line = lines[idx] if idx < len(lines) else idx + 1
        try:
            check_sft_record(rec, path, line)
        except InputError:
            if not skip_bad:
                raise
            stats.skipped += 1
            continue
        rec_role = rec.get("role", role)
        if rec_role != role:
            other_roles[rec_role] = other_roles.get(rec_role, 0) + 1
            continue
        records.append(rec)
    if other_roles and not records:
        found = ", ".join(f"{r!r}: {n}" for r, n in other_roles.items())
        raise InputError(f"no examples of role {role!r} (found {found}); pass the {role} SFT file",
                         path=path, field="role")
    if other_roles:
        log.warning("%s: skipped %d records of other roles", path, sum(other_roles.values()))
    if stats.skipped:
        log.warning("%s: skipped %d bad records (--skip-bad)", path, stats.skipped)
    if not records:
        raise InputError("no training examples (empty file)", path=path)
    return records


def tokenize_example(tokenizer: Any, rec: dict[str, Any], *, add_eos: bool = True) -> dict[str, list[int]]:
    """``input_ids`` = prompt tokens + turn tokens (+ EOS) and ``completion_mask`` = 1 exactly on
    the turn's tokens (and EOS). Prompt and turn are tokenised apart, as at inference."""
    prompt = render_chat(tokenizer, rec["prompt"], rec.get("assistant_prefix", ""))
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c_ids = c_ids + [tokenizer.eos_token_id]
    return {"input_ids": p_ids + c_ids, "completion_mask": [0] * len(p_ids) + [1] * len(c_ids)}


def build_dataset(tokenizer: Any, records: list[dict[str, Any]], *, max_length: int, add_eos: bool = True):
    """(a `datasets.Dataset` of tokenised examples, number dropped). An example longer than
    `max_length` tokens is dropped, never cut: cutting would teach a turn without its closing tag
    and EOS. Raises when nothing fits."""
    from datasets import Dataset

    ids, masks, dropped, longest = [], [], 0, 0
    for rec in records:
        ex = tokenize_example(tokenizer, rec, add_eos=add_eos)
        if len(ex["input_ids"]) > max_length:
            dropped += 1
            longest = max(longest, len(ex["input_ids"]))
            continue
        ids.append(ex["input_ids"])
        masks.append(ex["completion_mask"])
    if not ids:
        raise LongshortError(f"all {len(records)} examples are longer than max_length={max_length} tokens "
                             f"(the longest has {longest}); raise --max-length")
    if dropped:
        log.warning("dropped %d of %d examples longer than max_length=%d tokens (the longest has %d); "
                    "raise --max-length to keep them", dropped, len(records), max_length, longest)
    return Dataset.from_dict({"input_ids": ids, "completion_mask": masks}), dropped


def make_trainer(config: SFTRunConfig, records: list[dict[str, Any]] | None = None):
    """Build the TRL `SFTTrainer` for `config` (model, tokenised data, LoRA, arguments)."""
    from trl import SFTConfig, SFTTrainer

    lr = config.lr or (LR_LORA if config.lora else LR_FULL)
    out = Path(config.out)
    args = SFTConfig(**trainer_arguments(SFTConfig, dict(
        output_dir=str(out / "checkpoints"),
        **shared_arguments(config),
        learning_rate=lr,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    ), config.trainer))
    records = records if records is not None else load_sft_records(config.data, config.role,
                                                                   skip_bad=config.skip_bad)
    model, tok = load_for_training(config.model, init_kwargs=config.model_init_kwargs)
    dataset, dropped = build_dataset(tok, records, max_length=config.max_length, add_eos=config.add_eos)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    cls = trainer_class(SFTTrainer, config.compact_head, args.device.type)
    trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=tok,
                  peft_config=peft_config, callbacks=[heap_trim_callback()])
    trainer._longshort_dropped = dropped
    return trainer


def save_final(trainer: Any, out_dir: str | Path, *, lora: bool) -> None:
    """Save the trained model + tokenizer to `out_dir` as a plain transformers directory
    (LoRA adapters merged into the weights)."""
    out_dir = Path(out_dir)
    if lora:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if is_main_process():
            merged = model.merge_and_unload()
            merged.save_pretrained(out_dir)
            trainer.processing_class.save_pretrained(out_dir)
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(str(out_dir))  # gathers ZeRO-3 shards; saves the tokenizer too
        if is_main_process():
            trainer.processing_class.save_pretrained(out_dir)


def run_sft(config: SFTRunConfig) -> str:
    """Train `config.role` on its SFT file; return the output directory (a loadable model)."""
    out = Path(config.out)
    if is_finished(out):
        if config.resume:
            log.info("%s already holds a finished SFT model; nothing to do", out)
            return str(out)
        raise LongshortError(f"{out} already holds a trained model; pass --resume to keep it or choose another --out")
    ckpt = last_checkpoint(out / "checkpoints")
    if ckpt and not config.resume:
        raise LongshortError(f"{out}/checkpoints holds {Path(ckpt).name} from an earlier run; "
                             "pass --resume to continue it or choose another --out")
    check_hub(config)
    records = load_sft_records(config.data, config.role, skip_bad=config.skip_bad)
    barrier()
    trainer = make_trainer(config, records)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=ckpt if config.resume and ckpt else None)
    save_final(trainer, out, lora=config.lora)
    if is_main_process():
        metrics = {**result.metrics, "global_step": result.global_step, "examples": len(records),
                   "examples_trained": len(records) - trainer._longshort_dropped,
                   "dropped_over_max_length": trainer._longshort_dropped,
                   "wall_s": round(time.time() - started, 2), "resumed_from": ckpt if config.resume else None}
        write_json_atomic(out / "metrics.json", {"metrics": metrics, "log_history": trainer.state.log_history})
        write_done_marker(out, {"stage": "sft", "config": config.model_dump(), "metrics": metrics,
                                "manifest": environment_manifest(config.seed)})
    release_memory(trainer)
    if config.push_to_hub and is_main_process():
        push_finished(out, hub_repo_id(config), private=config.hub_private_repo)
    return str(out)
