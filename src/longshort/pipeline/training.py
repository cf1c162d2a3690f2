"""The training stages: cold-start SFT of both roles and the alternating multi-turn RL.

Training runs in this process by default, or under `accelerate launch` (multi-GPU, DeepSpeed)
when the recipe names `launch.accelerate_config`; either way the stage reads the run's
`metrics.json` and `longshort_run.json` markers, so a resumed pipeline continues a half-done
training run from its last checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from longshort.config import rl_run_config, sft_run_config
from longshort.errors import LongshortError
from longshort.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from longshort.pipeline.context import RunContext
from longshort.rundir import read_json


def train_one(ctx: RunContext, name: str, role: str, data: Path, out: Path, *, start: str | None = None
              ) -> dict[str, Any]:
    """One SFT run of `role` on `data` from `start` (default the base model) into `out`; its summary."""
    from longshort.training.sft import run_sft

    cfg = ctx.config
    ctx.log(f"SFT {name} on {data.name}")
    run_cfg = sft_run_config(cfg, role=role, data=str(data), model=start or cfg.models.base, out=str(out),
                             baseline=name == "baseline")
    if cfg.launch.accelerate_config is None:
        done = run_sft(run_cfg)
    else:
        done = launch(ctx, "sft", run_cfg, out.parent / f"{name}.run.json",
                      ["--role", run_cfg.role, "--data", run_cfg.data, "--model", run_cfg.model,
                       "--out", run_cfg.out, "--resume"])
    m = read_json(Path(done) / "metrics.json").get("metrics", {})
    return {"model": str(done), "train_loss": m.get("train_loss"), "examples": m.get("examples"),
            "dropped_too_long": m.get("dropped_too_long"), "wall_s": m.get("wall_s")}


def stage_sft(ctx: RunContext) -> dict[str, Any]:
    """Cold-start SFT of the long and the short model."""
    d = ctx.dir("sft")
    start = ctx.summaries["baseline"]["model"] if ctx.config.models.pair_init == "baseline" else None
    return {role: train_one(ctx, role, role, ctx.out / "coldstart" / f"{role}.jsonl", d / role, start=start)
            for role in ("long", "short")}


def launch(ctx: RunContext, command: str, run_cfg: Any, cfg_path: Path, required: list[str]) -> str:
    """Run `longshort sft|rl` under `accelerate launch` (multi-GPU, DeepSpeed) with the stage's
    full run config in a JSON file; the required options repeat what the file says."""
    write_json_atomic(cfg_path, run_cfg.model_dump(mode="json"))
    spec = ctx.config.launch
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(spec.accelerate_config)]
    if spec.num_processes:
        argv += ["--num_processes", str(spec.num_processes)]
    argv += ["-m", "longshort.cli", command, "--config", str(cfg_path), *required]
    ctx.log("launching: " + " ".join(argv))
    proc = subprocess.run(argv)
    if proc.returncode != 0:
        raise LongshortError(f"`{command}` under accelerate launch failed (exit {proc.returncode}); rerun with "
                             "--resume to continue from its last checkpoint")
    return run_cfg.out


def stage_rl(ctx: RunContext) -> dict[str, Any]:
    """Alternating multi-turn RL of the pair, starting from the SFT models."""
    from longshort.training.rl import run_rl

    cfg, d = ctx.config, ctx.dir("rl")
    problems = [{"id": t["id"], "problem": t["problem"], "answer": str(t["answer"]),
                 **({"choices": t["choices"]} if t.get("choices") else {})}
                for t in read_jsonl(ctx.out / "data" / "traces.jsonl")]
    data = d / "problems.jsonl"
    write_jsonl_atomic(data, problems)
    sft = ctx.summaries["sft"]
    run_cfg = rl_run_config(cfg, long=sft["long"]["model"], short=sft["short"]["model"], data=str(data),
                            out=str(d / "run"))
    if cfg.launch.accelerate_config is None:
        out = Path(run_rl(run_cfg))
    else:
        out = Path(launch(ctx, "rl", run_cfg, d / "rl.run.json",
                          ["--long", run_cfg.long, "--short", run_cfg.short, "--data", run_cfg.data,
                           "--out", run_cfg.out, "--resume"]))
    marker = read_json(out / "longshort_run.json")
    final = marker.get("final") or {}
    if not final.get("long") or not final.get("short"):
        raise LongshortError(f"RL finished without naming its final models ({out / 'longshort_run.json'})")
    history = []
    for it in marker.get("iterations", []):
        m = read_json(Path(it["dir"]) / "metrics.json")
        logs = [h for h in m.get("log_history", []) if "reward" in h]
        history.append({"iteration": it["iteration"], "role": it["role"],
                        "reward_first": logs[0]["reward"] if logs else None,
                        "reward_last": logs[-1]["reward"] if logs else None,
                        "reward_mean_first_half": _half_mean(logs, first=True),
                        "reward_mean_second_half": _half_mean(logs, first=False),
                        "steps": len(logs), "wall_s": (m.get("metrics") or {}).get("wall_s")})
    return {"long": final["long"], "short": final["short"], "iterations": len(history),
            "schedule": [h["role"] for h in history], "history": history}


def _half_mean(logs: list[dict[str, Any]], *, first: bool) -> float | None:
    if not logs:
        return None
    k = max(1, len(logs) // 2)
    part = logs[:k] if first else logs[-k:]
    return round(sum(float(h["reward"]) for h in part) / len(part), 4)
