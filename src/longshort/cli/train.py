"""CLI commands of the training area: `sft` (cold-start SFT of one role) and `rl` (alternating
multi-turn GRPO of the pair). Thin wrappers over `longshort.training.{sft,rl}`: options map
onto `SFTRunConfig` / `RLRunConfig` (whose defaults apply when an option is not given), a
YAML/JSON `--config` file may hold any config field, options override it.

Both work under ``accelerate launch --config_file configs/accelerate/<ddp|zero2|zero3>.yaml
-m longshort.cli sft ...``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from longshort.cli.app import app, config_option
from longshort.errors import InputError, LongshortError
from longshort.training.rl_config import RLRunConfig
from longshort.training.sft import LR_FULL, LR_LORA, SFTRunConfig

MODEL_HELP = "model spec (smollm2-135m, tiny-random, a local model dir, a hub id)"


def _file_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from longshort.io import YAML_MAX_BYTES, check_input_file, parse_record, read_yaml

    check_input_file(path, "YAML/JSON config file")
    if path.suffix in (".yaml", ".yml"):
        data = read_yaml(path) or {}  # no aliases, capped depth and size, no duplicated keys
    else:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise InputError("too large for a config file", path=str(path))
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text (byte {exc.start})", path=str(path)) from None
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc.msg}, column {exc.colno})", path=str(path),
                             line=exc.lineno) from None
        except (ValueError, RecursionError) as exc:
            raise InputError(str(exc) if isinstance(exc, ValueError) else "nested too deeply",
                             path=str(path)) from None
        if isinstance(data, dict):
            parse_record(json.dumps(data), path=str(path))  # NaN / Infinity are refused
    if not isinstance(data, dict):
        raise InputError("expected a mapping of config fields", path=str(path))
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} is given twice")
        out[k] = v
    return out


def _check_paths(data: Path, out: Path) -> None:
    """The data file and the output directory, before any model is loaded."""
    from longshort.io import check_input_file, check_output_dir

    check_input_file(data)
    check_output_dir(out)


def _check_problems(data: Path, skip_bad: bool) -> None:
    """The RL problems' fields and types (problem text, answer, ids), before any model loads."""
    from longshort.io import ReadStats, check_problem_fields, iter_jsonl

    stats = ReadStats()
    seen: dict[str, int] = {}
    good = 0
    for line, rec in iter_jsonl(data, skip_bad=skip_bad, stats=stats, with_lines=True):
        try:
            check_problem_fields(rec, path=str(data), line=line, answer_required=True)
            if rec.get("id") is not None:
                rid = str(rec["id"]).strip()
                if rid in seen:
                    raise InputError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=str(data),
                                     line=line, field="id")
                seen[rid] = line
        except InputError:
            if not skip_bad:
                raise
            stats.skipped += 1
            continue
        good += 1
    if not good:
        raise InputError("no records" if not stats.skipped else "no records left after skipping bad ones",
                         path=str(data))


def _nonfinite(value: Any, loc: str) -> str | None:
    """The dotted name of the first NaN/infinite float inside a config value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _nonfinite(v, f"{loc}.{k}")
        if found:
            return found
    return None


def _check_spec(spec: str, option: str) -> None:
    """A model spec that names nothing is refused before the trainer (or any model) is built."""
    from longshort.models import spec_problem

    why = spec_problem(spec)
    if why:
        raise InputError(why, field=option)


def _build(cls, file_values: dict[str, Any], options: dict[str, Any]):
    from pydantic import ValidationError

    given_options = {k: v for k, v in options.items() if v is not None}
    values = {**file_values, **given_options}
    known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
    unknown = sorted(str(k) for k in file_values if k not in known)
    if unknown:  # a misspelt field would otherwise be dropped silently
        raise InputError(f"unknown config field {unknown[0]!r}; accepted: {', '.join(sorted(cls.model_fields))}",
                         field=unknown[0])
    try:
        cfg = cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        name = "--" + loc.replace("_", "-") if loc else "config"
        raise LongshortError(f"{name}: {err['msg']}") from None
    # `gt=0` lets inf through (and "1e400" in YAML is a string pydantic reads as inf): a learning rate,
    # epochs or a timeout of inf or NaN is never meant
    for k, v in cfg.model_dump().items():
        where = _nonfinite(v, k)
        if where:
            top = where.split(".")[0]
            name = "--" + where.replace("_", "-") if top in given_options and top == where else where
            raise InputError("expected a finite number, got " + ("a NaN or an infinity" if top != where else str(v)),
                             field=name)
    return cfg


@app.command()
def sft(
    role: str = typer.Option(..., help="role to train: long | short"),
    data: Path = typer.Option(..., help="SFT JSONL of that role (written by `longshort coldstart`)"),
    model: str = typer.Option(..., help=MODEL_HELP),
    out: Path = typer.Option(..., help="output dir: final model (a loadable model dir), checkpoints/, logs"),
    max_steps: int | None = config_option(SFTRunConfig, "max_steps", min=1, help="optimizer steps; the default -1 runs --epochs passes"),
    epochs: float | None = config_option(SFTRunConfig, "epochs", help="passes over the data"),
    lora: bool | None = config_option(SFTRunConfig, "lora", "--lora/--full", help="LoRA adapters (merged on save) or all weights"),
    lr: float | None = config_option(SFTRunConfig, "lr", help=f"learning rate (default {LR_FULL:g} full, {LR_LORA:g} LoRA)"),
    batch_size: int | None = config_option(SFTRunConfig, "batch_size", min=1, help="examples per device per step"),
    grad_accum: int | None = config_option(SFTRunConfig, "grad_accum", min=1, help="gradient accumulation steps"),
    max_length: int | None = config_option(SFTRunConfig, "max_length", min=1, help="max tokens per example (longer ones are dropped and counted)"),
    save_steps: int | None = config_option(SFTRunConfig, "save_steps", min=1, help="checkpoint every N steps"),
    precision: str | None = config_option(SFTRunConfig, "precision", help="auto | fp32 | bf16 | fp16"),
    report_to: str | None = config_option(SFTRunConfig, "report_to", help="tensorboard | wandb | tensorboard,wandb | none"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in OUT"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) bad records instead of stopping"),
    seed: int | None = config_option(SFTRunConfig, "seed", help="random seed"),
    push_to_hub: bool | None = config_option(SFTRunConfig, "push_to_hub", "--push-to-hub/--no-push-to-hub",
                                             help="push the final model to the Hugging Face Hub"),
    hub_model_id: str | None = config_option(SFTRunConfig, "hub_model_id", help="hub repository (default: OUT's name)"),
    config: Path | None = typer.Option(None, help="YAML/JSON file with SFTRunConfig fields (options override)"),
) -> None:
    """Cold-start SFT of one role on its turns (loss on the turn only)."""
    from longshort.training.sft import run_sft

    _check_paths(data, out)
    cfg = _build(SFTRunConfig, _file_config(config), dict(
        role=role, data=str(data), model=model, out=str(out), max_steps=max_steps, epochs=epochs, lora=lora,
        lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, save_steps=save_steps,
        precision=precision, report_to=report_to, resume=resume or None, skip_bad=skip_bad or None, seed=seed,
        push_to_hub=push_to_hub, hub_model_id=hub_model_id))
    _check_spec(cfg.model, "--model")
    result = run_sft(cfg)
    typer.echo(f"saved {cfg.role} model to {result}")


@app.command()
def rl(
    long: str = typer.Option(..., help="long-thought model: " + MODEL_HELP),
    short: str = typer.Option(..., help="short-thought model: " + MODEL_HELP),
    data: Path = typer.Option(..., help="problems JSONL with problem + answer"),
    out: Path = typer.Option(..., help="output dir: iter{k}_{role}/ models, checkpoints/, logs"),
    iterations: int | None = config_option(RLRunConfig, "iterations", min=1, help="alternating iterations K"),
    first: str | None = config_option(RLRunConfig, "first", help="role trained first: long | short"),
    max_steps: int | None = config_option(RLRunConfig, "max_steps", min=1, help="optimizer steps per iteration; the default -1 runs --epochs passes"),
    epochs: float | None = config_option(RLRunConfig, "epochs", help="passes over the problems per iteration"),
    num_generations: int | None = config_option(RLRunConfig, "num_generations", min=1, help="dialogues per problem, the GRPO group"),
    batch_size: int | None = config_option(RLRunConfig, "batch_size", min=1, help="dialogues per device per step, a multiple of "
                                           "--num-generations"),
    grad_accum: int | None = config_option(RLRunConfig, "grad_accum", min=1, help="gradient accumulation steps"),
    lr: float | None = config_option(RLRunConfig, "lr", help="learning rate"),
    beta: float | None = config_option(RLRunConfig, "beta", help="KL coefficient (0: no reference model)"),
    temperature: float | None = config_option(RLRunConfig, "temperature", help="sampling temperature of the trained role"),
    max_turns: int | None = config_option(RLRunConfig, "dialogue.max_turns", min=1, help="long turns per dialogue"),
    max_new_tokens_long: int | None = config_option(RLRunConfig, "dialogue.max_new_tokens_long", min=1, help="token limit of a long turn"),
    max_new_tokens_short: int | None = config_option(RLRunConfig, "dialogue.max_new_tokens_short", min=1, help="token limit of a short turn"),
    correctness_weight: float | None = config_option(RLRunConfig, "rewards.correctness_weight", help="weight of the correctness reward"),
    format_weight: float | None = config_option(RLRunConfig, "rewards.format_weight", help="weight of the format reward"),
    length_weight: float | None = config_option(RLRunConfig, "rewards.length_weight", help="weight of the length bonus"),
    length_budget: int | None = config_option(RLRunConfig, "rewards.length_budget", min=1, help="tokens at which the length bonus is 0"),
    partner_base_url: str | None = typer.Option(None, help="OpenAI-compatible server serving the frozen partner "
                                                "(its model name: the partner's --long/--short value)"),
    partner_server: str | None = config_option(RLRunConfig, "partner_server", help="managed: start a server for "
                                               "each iteration's partner and stop it after; none: in-process or "
                                               "--partner-base-url"),
    partner_server_command: str | None = typer.Option(None, help="with --partner-server managed: the server "
                                                      "command per iteration, e.g. 'vllm serve {model} --port "
                                                      "{port}' (default: longshort serve)"),
    partner_server_timeout: float | None = config_option(RLRunConfig, "partner_server_timeout",
                                                         help="seconds a managed partner server may take to start"),
    lora: bool | None = config_option(RLRunConfig, "lora", "--lora/--full", help="LoRA adapters (merged on save) or all weights"),
    save_steps: int | None = config_option(RLRunConfig, "save_steps", min=1, help="checkpoint every N steps"),
    precision: str | None = config_option(RLRunConfig, "precision", help="auto | fp32 | bf16 | fp16"),
    report_to: str | None = config_option(RLRunConfig, "report_to", help="tensorboard | wandb | tensorboard,wandb | none"),
    resume: bool = typer.Option(False, "--resume", help="skip finished iterations, continue from checkpoints"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) bad problem records"),
    seed: int | None = config_option(RLRunConfig, "seed", help="random seed"),
    push_to_hub: bool | None = config_option(RLRunConfig, "push_to_hub", "--push-to-hub/--no-push-to-hub",
                                             help="push each trained role's final model to the Hugging Face Hub"),
    hub_model_id: str | None = config_option(RLRunConfig, "hub_model_id", help="hub repository; the role is "
                                             "appended (-long / -short); default: OUT's name"),
    config: Path | None = typer.Option(None, help="YAML/JSON file with RLRunConfig fields (options override)"),
) -> None:
    """Multi-turn RL of the pair: train one role with the partner frozen, save, swap (K iterations)."""
    from longshort.training.rl import run_rl

    _check_paths(data, out)
    _check_problems(data, skip_bad)
    file_values = _file_config(config)
    dialogue = dict(file_values.pop("dialogue", {}) or {})
    dialogue.update({k: v for k, v in dict(max_turns=max_turns, max_new_tokens_long=max_new_tokens_long,
                                           max_new_tokens_short=max_new_tokens_short).items() if v is not None})
    rewards = dict(file_values.pop("rewards", {}) or {})
    rewards.update({k: v for k, v in dict(correctness_weight=correctness_weight, format_weight=format_weight,
                                          length_weight=length_weight, length_budget=length_budget).items()
                    if v is not None})
    defaults = RLRunConfig.model_fields
    if dialogue:
        base = defaults["dialogue"].default_factory().model_dump()
        file_values["dialogue"] = {**base, **dialogue}
    if rewards:
        file_values["rewards"] = rewards
    cfg = _build(RLRunConfig, file_values, dict(
        long=long, short=short, data=str(data), out=str(out), iterations=iterations, first=first,
        max_steps=max_steps, epochs=epochs, num_generations=num_generations, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, beta=beta, temperature=temperature, partner_base_url=partner_base_url,
        partner_server=partner_server, partner_server_command=partner_server_command,
        partner_server_timeout=partner_server_timeout,
        lora=lora, save_steps=save_steps, precision=precision, report_to=report_to, resume=resume or None,
        skip_bad=skip_bad or None, seed=seed, push_to_hub=push_to_hub, hub_model_id=hub_model_id))
    for spec, role in ((cfg.long, "long"), (cfg.short, "short")):
        if not (cfg.partner_base_url and role != cfg.schedule()[0]):  # a served partner is a model name
            _check_spec(spec, f"--{role}")
    result = run_rl(cfg)
    final = json.loads((Path(result) / "longshort_run.json").read_text())["final"]
    typer.echo(f"done: long = {final['long']}, short = {final['short']}")
