"""`run_pipeline`: the stage list, the run-directory checks and the loop that runs the stages."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from longshort.config import PipelineConfig, dump_config, load_config
from longshort.errors import LongshortError
from longshort.io import write_json_atomic, write_text_atomic
from longshort.models import free_memory
from longshort.pipeline.child import run_in_child
from longshort.pipeline.context import (
    LOG_FILE,
    Console,
    RunContext,
    Stage,
    StagePeak,
    captured_output,
    cpu_seconds,
    peak_rss_mb,
    seed_everything,
)
from longshort.pipeline.evaluate import stage_eval
from longshort.pipeline.report import stage_report, write_summary
from longshort.pipeline.stages import (
    needs_baseline_sft,
    stage_baseline,
    stage_chunk,
    stage_coldstart,
    stage_data,
    stage_score,
)
from longshort.pipeline.training import stage_rl, stage_sft
from longshort.rundir import environment_manifest, fingerprint, guard_run_dir, read_json

DONE = "DONE"
STARTED = "STARTED"


def _h_data(s: dict[str, Any]) -> str:
    sets = ", ".join(f"{k} {v}" for k, v in s.get("eval_sets", {}).items())
    return f"{s['traces']} training traces; eval sets: {sets}"


def _h_chunk(s: dict[str, Any]) -> str:
    b = s.get("boundary")
    return f"{s['thoughts_per_trace']} thoughts per trace" + (f", boundary F1 {b['f1']:.3f} vs planted" if b else "")


def _h_score(s: dict[str, Any]) -> str:
    au = (s.get("auroc") or {}).get("auroc")
    pva = s.get("plan_vs_actual") or {}
    cost = (f", {pva['actual']} generated tokens (estimated {pva['estimated']})"
            if pva.get("estimated") else "")
    return f"{s['traces']} traces scored ({s.get('estimator')}, {s.get('model')})" + cost + (
        f", AUROC {au:.3f}" if au is not None else "")


def _h_coldstart(s: dict[str, Any]) -> str:
    ex = s.get("examples", {})
    return f"{ex.get('long')} long / {ex.get('short')} short examples, compression {s.get('compression_ratio')}"


def _h_train(s: dict[str, Any]) -> str:
    parts = [f"{k} loss {v['train_loss']:.3f}" for k, v in s.items() if isinstance(v, dict) and v.get("train_loss")]
    if s.get("train_loss") is not None:
        parts.append(f"loss {s['train_loss']:.3f}")
    return ", ".join(parts) or "done"


def _h_rl(s: dict[str, Any]) -> str:
    return "; ".join(f"{h['role']}: reward {h.get('reward_mean_first_half')} → {h.get('reward_mean_second_half')}"
                     for h in s.get("history", [])) or "done"


def _h_eval(s: dict[str, Any]) -> str:
    out = []
    for label, systems in s["results"].items():
        out.append(f"{label}: " + ", ".join(f"{k} {100 * v['accuracy']:.1f}% @ {v['tokens']['total']:.0f} tok"
                                            for k, v in systems.items()))
    return "; ".join(out)


STAGES: list[Stage] = [
    Stage("data", stage_data, ("data",), "training traces and evaluation sets", _h_data, loads_models=False),
    Stage("chunk", stage_chunk, ("data", "chunk", "models"), "split traces into thoughts", _h_chunk,
          loads_models=lambda c: c.chunk.method == "llm"),
    Stage("baseline", stage_baseline, ("data", "models", "sft", "baseline_sft", "eval.baseline"),
          "SFT of the long-CoT baseline on the whole traces", _h_train),
    Stage("score", stage_score, ("data", "chunk", "score", "models", "sft", "baseline_sft", "eval.baseline",
                                 "quality"),
          "importance of every thought", _h_score),
    Stage("coldstart", stage_coldstart, ("data", "chunk", "score", "coldstart", "models", "sft", "baseline_sft", "eval.baseline"),
          "assign thoughts to roles, build the SFT sets", _h_coldstart,
          loads_models=lambda c: c.coldstart.compressor == "llm"),
    Stage("sft", stage_sft, ("data", "chunk", "score", "coldstart", "models", "sft", "baseline_sft", "eval.baseline"),
          "cold-start SFT of both roles", _h_train),
    Stage("rl", stage_rl, ("data", "chunk", "score", "coldstart", "models", "sft", "baseline_sft", "eval.baseline", "rl"),
          "alternating multi-turn RL of the pair", _h_rl),
    Stage("eval", stage_eval, ("data", "chunk", "score", "coldstart", "models", "sft", "baseline_sft", "rl", "eval"),
          "the pair, the long-CoT baseline and the short model on every evaluation set", _h_eval),
    Stage("report", stage_report, ("data", "chunk", "score", "coldstart", "models", "sft", "baseline_sft", "rl", "eval", "report"),
          "metrics.json, report.md, plots", None, loads_models=False),
]
STAGE_NAMES = [s.name for s in STAGES]


def _drop_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_none(v) for v in node]
    return node


def stage_fingerprint(config: PipelineConfig, stage: Stage) -> str:
    """A hash of the config sections (dotted paths) a stage's result depends on, plus the seed.
    Fields that are None are left out, so a release that adds an optional field (None = unset)
    does not invalidate the finished stages of earlier runs."""
    dumped = _drop_none(config.model_dump(mode="json"))

    def get(path: str) -> Any:
        node: Any = dumped
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return fingerprint({s: get(s) for s in stage.sections} | {"seed": config.seed})


def run_pipeline(config_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 resume: bool = False, *, stop_after: str | None = None, verbose: bool = False) -> Path:
    """Run the recipe at `config_path` into `out_dir` (default `runs/<name>`), up to and including
    `stop_after` (default: the recipe's `stop_after`, else every stage). Returns the run dir."""
    config = load_config(config_path)
    stop = stop_after or config.stop_after
    if stop is not None and stop not in STAGE_NAMES:
        raise LongshortError(f"unknown stage {stop!r} for --stop-after; stages: {', '.join(STAGE_NAMES)}")
    out = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    fingerprints = {stage.name: stage_fingerprint(config, stage) for stage in STAGES}
    check_run_dir(out, resume, fingerprints)  # before anything is written
    prepare_run_dir(out, config)
    console = Console()
    with captured_output(out / LOG_FILE, verbose=verbose) as log:
        console.attach_log(log)
        try:
            _run_stages(config, out, resume, console, str(config_path), fingerprints, stop)
        finally:
            console.attach_log(None)
    for line in write_summary(RunContext(config, out, resume, console)) if (out / "metrics.json").exists() else []:
        console.print(line)
    console.print(f"log: {out / LOG_FILE}")
    console.close()
    return out


def _run_stages(config: PipelineConfig, out: Path, resume: bool, console: Console, config_path: str,
                fingerprints: dict[str, str], stop: str | None) -> None:
    seed_everything(config.seed)
    ctx = RunContext(config, out, resume, console, config_path)
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path) or environment_manifest(config.seed)
    manifest.setdefault("stages", {})
    if resume:
        manifest.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json_atomic(manifest_path, manifest)
    t_all = time.time()
    stages = STAGES[: STAGE_NAMES.index(stop) + 1] if stop else STAGES
    ctx.stages = [s.name for s in stages]
    for i, stage in enumerate(stages, start=1):
        done_path = out / stage.name / DONE
        fp = fingerprints[stage.name]
        tag = f"[{i}/{len(stages)}] {stage.name}"
        if done_path.exists() and stage.name == "baseline" and needs_baseline_sft(config, ctx.stages) \
                and read_json(done_path).get("summary", {}).get("model") is None:
            done_path.unlink()  # skipped by an earlier run that stopped sooner; this one needs it
        if done_path.exists():
            done = json.loads(done_path.read_text())
            ctx.summaries[stage.name] = done.get("summary", {})
            console.print(f"{tag}: done earlier, skipped ({done.get('seconds', 0):.0f} s then)")
            continue
        write_json_atomic(out / stage.name / STARTED, {"stage": stage.name, "fingerprint": fp})
        console.print(f"{tag}: {stage.description} …")
        print(f"\n===== stage {stage.name}", flush=True)
        t0, c0, peak = time.time(), cpu_seconds(), StagePeak()
        try:
            if stage.in_child(config):
                summary, child_peak = run_in_child(stage, ctx)
            else:
                summary, child_peak = stage.run(ctx), None
        except BaseException:
            console.print(f"{tag}: failed after {time.time() - t0:.0f} s (details in {out / LOG_FILE})")
            raise
        seconds, cpu = time.time() - t0, cpu_seconds() - c0
        ctx.summaries[stage.name] = summary
        # the stage's trainers, engines and datasets are unreachable now: give their memory back, so
        # the next stage's peak is its own (a finished in-process SFT left ~1.6 GB resident, 0.6 GB after)
        free_memory()
        write_json_atomic(done_path, {"stage": stage.name, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                                      "fingerprint": fp, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "summary": summary})
        manifest["stages"][stage.name] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                                          "peak_rss_mb": max((p for p in (peak.mb, child_peak) if p is not None),
                                                             default=None)}
        manifest["peak_rss_mb"] = peak_rss_mb()
        write_json_atomic(manifest_path, manifest)
        figure = ""
        if stage.headline is not None:
            try:
                figure = ": " + stage.headline(summary)
            except (KeyError, TypeError, ValueError):
                figure = ""
        console.print(f"{tag}: done in {seconds:.0f} s{figure}")
    manifest["total_seconds_this_invocation"] = round(time.time() - t_all, 2)
    manifest["peak_rss_mb"] = peak_rss_mb()
    write_json_atomic(manifest_path, manifest)


def check_run_dir(out: Path, resume: bool, fingerprints: dict[str, str]) -> None:
    """Refuse a run directory that holds another run (without --resume), stages made with a
    different config, or a finished stage after an unfinished one (its inputs would change)."""
    guard_run_dir(out, resume=resume, marker="config.yaml", what="pipeline run")
    unfinished = None
    for stage in STAGES:
        fp = fingerprints[stage.name]
        done, started = out / stage.name / DONE, out / stage.name / STARTED
        if done.exists():
            if read_json(done).get("fingerprint") != fp:
                raise LongshortError(f"{out}/{stage.name} was finished with a different config (sections "
                                     f"{', '.join(stage.sections)}); use a new --out directory")
            if unfinished is not None:
                raise LongshortError(f"{out}/{stage.name} is finished but the earlier stage {unfinished} is not, "
                                     f"so its inputs would change; remove {stage.name}/ and the later stage "
                                     "directories, or use a new --out")
        else:
            if started.exists() and read_json(started).get("fingerprint") != fp:
                raise LongshortError(f"{out}/{stage.name} holds partial results made with a different config "
                                     f"(sections {', '.join(stage.sections)}); use a new --out directory")
            unfinished = unfinished or stage.name


def prepare_run_dir(out: Path, config: PipelineConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = dump_config(config)
    cfg_path = out / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != resolved:
        # a resumed run whose recipe changed only in ways no finished stage depends on: keep the old
        write_text_atomic(out / f"config.{int(time.time())}.previous.yaml", cfg_path.read_text())
    write_text_atomic(cfg_path, resolved)
