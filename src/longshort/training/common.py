"""Pieces shared by SFT and RL: model checks and loading for training, precision, logging
targets, checkpoint discovery and the "finished" marker of an output dir.

A finished training output is a normal transformers directory (``config.json``, weights,
tokenizer files) plus ``longshort_run.json`` (resolved config, metrics and, under ``manifest``,
the environment manifest of `longshort.rundir`, the one schema every run directory records);
``longshort_run.json`` is written last, so its presence means the directory is complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from longshort import models
from longshort.errors import LongshortError
from longshort.io import write_json_atomic
from longshort.models import PRECISION_HELP, Precision  # noqa: F401 - re-exported for sft/rl

DONE_MARKER = "longshort_run.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_spec(spec: str, *, what: str = "model") -> None:
    """Fail early, with one clear line, on a spec that names no model (`models.spec_problem`, the
    check the CLI makes) or a local model directory that cannot be trained: no ``config.json`` or
    no tokenizer files."""
    from longshort.models import spec_problem

    why = spec_problem(spec)
    if why:
        raise LongshortError(f"{what}: {why}")
    path = Path(spec).expanduser()
    if not path.is_dir():
        return
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        raise LongshortError(
            f"{what} directory {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained(dir))")


def load_for_training(spec: str, *, what: str = "model", init_kwargs: dict[str, Any] | None = None
                      ) -> tuple[Any, Any]:
    """(model, tokenizer) on CPU, ready for a TRL trainer (which moves it to the accelerator's
    device and handles mixed precision itself): float32 unless `init_kwargs` (the run config's
    `model_init_kwargs`, TRL's name) says otherwise; its other keys (``attn_implementation``, ...)
    go to ``from_pretrained``."""
    from longshort.models import load_model

    check_model_spec(spec, what=what)
    kwargs = dict(init_kwargs or {})
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", "float32"))
    model, tok = load_model(spec, dtype=dtype, device="cpu", **kwargs)
    model.train()
    if tok.pad_token_id is None:  # load_model promises one; keep the trainer safe anyway
        tok.pad_token = tok.eos_token
    return model, tok


def precision_flags(precision: Precision) -> dict[str, bool]:
    """`bf16`/`fp16` TrainingArguments for a precision choice, resolved by
    `longshort.models.resolve_precision` for the device the trainer uses (auto = bf16 on a CUDA
    GPU with bf16 and on a CPU with AMX-BF16/AVX512-BF16, else fp32). bf16/fp16 is mixed
    precision: the weights and optimizer state stay fp32 (`load_for_training`), forward and
    backward run under autocast."""
    import torch

    from longshort.models import resolve_precision

    cuda = torch.cuda.is_available()
    chosen = resolve_precision(precision, "cuda" if cuda else "cpu")
    flags = {"bf16": chosen == "bf16", "fp16": chosen == "fp16"}
    if flags["bf16"] and not cuda:
        flags["use_cpu"] = True  # transformers asks for it before it autocasts to bf16 on a CPU
    return flags


#: TRL/transformers argument -> the field of our run configs that sets it (`trainer_arguments`).
OUR_NAMES = {"output_dir": "out", "max_steps": "max_steps", "num_train_epochs": "epochs",
             "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
             "learning_rate": "lr", "warmup_steps": "warmup", "max_length": "max_length",
             "logging_steps": "logging_steps", "save_steps": "save_steps", "save_total_limit": "save_total_limit",
             "report_to": "report_to", "seed": "seed", "gradient_checkpointing": "gradient_checkpointing",
             "bf16": "precision", "fp16": "precision", "use_cpu": "precision", "num_generations": "num_generations",
             "lr_scheduler_type": "lr_scheduler_type", "beta": "beta", "epsilon": "epsilon",
             "temperature": "temperature", "top_p": "top_p", "max_completion_length": "dialogue",
             "mask_truncated_completions": "mask_truncated_completions", "reward_weights": "rewards",
             "model_init_kwargs": "model_init_kwargs", "push_to_hub": "push_to_hub",
             "hub_model_id": "hub_model_id", "hub_private_repo": "hub_private_repo"}


#: `pad_to_multiple_of` for CPU training in bf16 when the recipe's `trainer:` sets none. oneDNN, which
#: runs a CPU's bf16 matmuls, builds and caches kernels for every matmul shape it meets, so batches of
#: every length made resident memory grow step after step: the quickstart baseline SFT (SmolLM2-135M,
#: 1 x 8, checkpointing) from 2,154 to 2,628 MiB over 6 steps, against a flat 2,097 MiB for 10 steps
#: with lengths padded to a multiple of 64, and its step peak 4,297 -> 3,688 MiB (docs/training.md).
#: fp32 matmuls do not go through oneDNN's cache, and TRL's own "auto" pads only on Neuron.
CPU_BF16_PAD_MULTIPLE = 64


def shape_padding(flags: dict[str, bool], trainer: dict[str, Any]) -> dict[str, Any]:
    """TRL's `pad_to_multiple_of` for `precision_flags` result `flags`: `CPU_BF16_PAD_MULTIPLE` on a
    CPU in bf16 unless the recipe's `trainer:` mapping sets it (then that is passed as it is)."""
    if flags.get("bf16") and flags.get("use_cpu") and "pad_to_multiple_of" not in trainer:
        return {"pad_to_multiple_of": CPU_BF16_PAD_MULTIPLE}
    return {}


def shared_arguments(config: Any) -> dict[str, Any]:
    """The TRL arguments SFT and RL set the same way from their run configs' common fields."""
    flags = precision_flags(config.precision)
    return dict(max_steps=config.max_steps, num_train_epochs=config.epochs,
                per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
                warmup_steps=config.warmup, logging_steps=config.logging_steps, save_steps=config.save_steps,
                save_total_limit=config.save_total_limit, report_to=report_targets(config.report_to),
                seed=config.seed, **flags, **shape_padding(flags, config.trainer),
                gradient_checkpointing=config.gradient_checkpointing,  # TRL defaults to True; ours is explicit
                model_init_kwargs=None,  # we build the model (`load_for_training` takes config.model_init_kwargs)
                # we push the finished model ourselves (`push_model`), not TRL's checkpoints
                push_to_hub=False, hub_model_id=None, hub_private_repo=None)


def trainer_arguments(config_cls: type, ours: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a TRL config (`SFTConfig`, `GRPOConfig`): what our run config sets
    (`ours`), plus the recipe's `trainer:` mapping (`extra`) passed as it is. Checked before any
    model loads: a key the TRL config does not have is refused (a typo would otherwise train with
    the default), and so is a key that our config sets (set our field: `lr`, not `learning_rate`;
    or, for the few we fix, such as `packing`, it cannot be changed).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     learning_rate: float = 1e-5
    ...     weight_decay: float = 0.0
    >>> trainer_arguments(Cfg, {"learning_rate": 2e-5}, {"weight_decay": 0.1})
    {'learning_rate': 2e-05, 'weight_decay': 0.1}
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in extra:
        if key not in known:
            raise LongshortError(f"trainer.{key}: {config_cls.__name__} has no such argument (see TRL's "
                                 f"{config_cls.__name__} docs for the accepted ones)")
        if key in ours:
            ours_name = OUR_NAMES.get(key)
            hint = f"set `{ours_name}` instead" if ours_name else "longshort sets it for the data it builds"
            raise LongshortError(f"trainer.{key}: {hint}")
    return {**ours, **extra}


def report_targets(report_to: str) -> list[str]:
    """``tensorboard`` (default), ``wandb``, both (comma separated) or ``none``."""
    names = [s.strip() for s in report_to.split(",") if s.strip()]
    if not names or names == ["none"]:
        return []
    for name in names:
        if name not in ("tensorboard", "wandb"):
            raise LongshortError(f"unknown --report-to {name!r}; use tensorboard, wandb or none")
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise LongshortError("--report-to wandb needs the wandb package (pip install wandb)") from exc
    return names


def last_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` under `ckpt_dir` (highest N holding a trainer
    state), or None."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return None
    found = []
    for child in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if m and child.is_dir() and (child / "trainer_state.json").exists():
            found.append((int(m.group(1)), child))
    return str(max(found)[1]) if found else None


def is_finished(out_dir: str | os.PathLike) -> bool:
    """True when `out_dir` holds a complete, finished model (its marker was written last)."""
    return (Path(out_dir) / DONE_MARKER).exists() and (Path(out_dir) / "config.json").exists()


def write_done_marker(out_dir: str | os.PathLike, payload: dict[str, Any]) -> None:
    write_json_atomic(Path(out_dir) / DONE_MARKER, payload)


def release_memory(trainer: Any = None) -> None:
    """Give back what a finished trainer holds (model, optimizer state, gradients, accelerate's
    references) so the next stage of the same process does not stack on top of it: drop the
    trainer's references, collect cycles, empty the CUDA cache and return freed heap pages to the
    OS (glibc ``malloc_trim``; without it RSS stays at the peak after the tensors are gone)."""
    if trainer is not None:
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None:
            accelerator.free_memory()
        for name in ("model", "model_wrapped", "optimizer", "lr_scheduler", "ref_model"):
            if hasattr(trainer, name):
                setattr(trainer, name, None)
    models.free_memory()


def heap_trim_callback() -> Any:
    """A `TrainerCallback` that trims the C heap after every micro-batch and optimizer step.

    Without it, CPU training's resident memory grows step after step although the tensors are
    freed: glibc keeps the freed, fragmented buffers of autograd's temporaries (more of them in
    bf16 autocast, whose casts allocate anew each step). Measured on the quickstart's baseline SFT
    (SmolLM2-135M, bf16, batch 1 × 8 with checkpointing): 3.97 GB peak after 2 steps, 4.89 GB after
    6. A trim costs milliseconds against seconds per micro-batch."""
    from transformers import TrainerCallback

    class HeapTrim(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            models.trim_heap()

        def on_step_end(self, args, state, control, **kwargs):
            models.trim_heap()

    return HeapTrim()


def is_main_process() -> bool:
    """True on the rank-0 process (or when not distributed): it alone writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process of an `accelerate launch` run (no-op in a single process), so no
    rank starts writing before all ranks have checked the output directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


MODEL_INIT_HELP = ("keyword arguments for the model's from_pretrained, as TRL's model_init_kwargs: e.g. "
                   "{attn_implementation: sdpa} or {dtype: bfloat16} (weights and optimizer state then in bf16, "
                   "half the memory; the default float32 keeps fp32 master weights under `precision: bf16`)")
_NOT_INIT_KWARGS = ("device_map", "device", "quantization_config", "pretrained_model_name_or_path")


def check_init_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    """`model_init_kwargs` of a run config: string keys; a dtype longshort knows; no placement
    keys (the trainer places the model)."""
    from longshort.models import _torch_dtype

    for key, v in value.items():
        if not isinstance(key, str):
            raise ValueError(f"model_init_kwargs keys must be strings (got {key!r})")
        if key in _NOT_INIT_KWARGS:
            raise ValueError(f"model_init_kwargs.{key}: the trainer places and loads the model; not settable here")
        if key in ("dtype", "torch_dtype"):
            try:
                _torch_dtype(v)
            except LongshortError as exc:
                raise ValueError(f"model_init_kwargs.{key}: {exc}") from None
    return value


#: the type of a run config's `model_init_kwargs`: checked by `check_init_kwargs` wherever the field is
InitKwargs = Annotated[dict[str, Any] | None, AfterValidator(lambda v: None if v is None else check_init_kwargs(v))]


# ----------------------------------------------------------------------------- the hub

HUB_HELP = ("push the final model to the Hugging Face Hub when training ends (TRL's name); needs a "
            "token (`hf auth login` or $HF_TOKEN), checked before any model loads")
HUB_ID_HELP = ("hub repository of the pushed model, 'user/name' or 'name' (in the token's namespace); None = "
               "the output directory's name, as TRL does")
#: what a pushed model directory leaves out: checkpoints (resume state), logs and TensorBoard runs
HUB_IGNORE = ("checkpoints/*", "logs/*", "runs/*", "*.log")


def hub_repo_id(config: Any, suffix: str = "") -> str | None:
    """The repository `config` pushes to (`hub_model_id`, else the output dir's name) plus
    `suffix` (RL pushes each role as ``<id>-long`` / ``<id>-short``); None when it does not push."""
    if not getattr(config, "push_to_hub", False):
        return None
    return (config.hub_model_id or Path(config.out).resolve().name) + suffix


def check_hub(config: Any, suffixes: tuple[str, ...] = ("",)) -> None:
    """Before any model loads: refuse `push_to_hub` that could not push at the end (offline mode,
    no token, a repository id the hub would refuse), so hours of training do not end in an error."""
    if not getattr(config, "push_to_hub", False):
        return
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for suffix in suffixes:
        repo = hub_repo_id(config, suffix)
        try:
            validate_repo_id(repo)
        except HFValidationError as exc:
            raise LongshortError(f"hub_model_id: {repo!r} is not a valid hub repository id ({exc})") from None
    if constants.HF_HUB_OFFLINE:
        raise LongshortError("push_to_hub: the hub is in offline mode ($HF_HUB_OFFLINE); unset it or push later "
                             "with `hf upload`")
    if not get_token():
        raise LongshortError("push_to_hub needs a Hugging Face token: run `hf auth login` or set $HF_TOKEN")


def push_model(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
               commit_message: str = "longshort: trained model") -> str:
    """Create `repo_id` if needed (a model repo) and upload the finished model directory `folder`
    without its checkpoints and logs (`HUB_IGNORE`); return the commit URL. Main process only."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=getattr(url, "repo_id", repo_id), folder_path=str(folder),
                             commit_message=commit_message, ignore_patterns=list(HUB_IGNORE), repo_type="model")
    return str(getattr(info, "commit_url", info))


def push_finished(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None) -> str:
    """`push_model` for a finished training output: a failed upload says that the model is saved
    and how to push it by hand, instead of a traceback at the end of a run."""
    import logging

    try:
        url = push_model(folder, repo_id, private=private)
    except Exception as exc:  # network, permissions, quota: the trained model is safe on disk
        raise LongshortError(f"push_to_hub: uploading {folder} to {repo_id} failed ({type(exc).__name__}: "
                             f"{exc}); the model is saved there, push it with `hf upload {repo_id} {folder}`") from None
    logging.getLogger(__name__).info("pushed %s to the hub: %s", folder, url)
    return url
