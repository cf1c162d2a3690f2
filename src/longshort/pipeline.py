"""The whole Long⊗Short pipeline in one command (DESIGN §1, §8; issue 6).

    data → chunk → score → coldstart → sft (long, short[, baseline]) → rl → eval → report

`run_pipeline(config_path, out_dir, resume)` validates the recipe (`longshort.config`), then runs
each stage as a call into that stage's library function, with its outputs in its own
subdirectory of the run directory:

    OUT/config.yaml       the resolved config (every default written out)
    OUT/manifest.json     package versions, seed, git revision, machine, stage timings
    OUT/data/             traces.jsonl (long-CoT, with planted truth for the synthetic task), eval/*.jsonl
    OUT/chunk/            chunks.jsonl (+ quality.json: boundary F1 against the planted truth)
    OUT/score/            scored.jsonl (Monte Carlo importance; + quality.json: AUROC)
    OUT/coldstart/        long.jsonl, short.jsonl (SFT sets), stats.json
    OUT/sft/              long/, short/ (and baseline/: the base model tuned on the full traces)
    OUT/rl/               the alternating multi-turn RL; its final long and short models
    OUT/eval/SET/SYSTEM/  predictions.jsonl, metrics.json per evaluation set and system
    OUT/metrics.json      every headline number; OUT/report.md + OUT/report/*.png

A stage is finished when its `DONE` file exists (JSON: seconds, summary, a fingerprint of the
config it ran with). With `resume` finished stages are skipped, an unfinished one restarts and
its own resumable writers skip the records already written; a stage finished under a different
config is an error (start a new run directory). Without `resume`, a run directory that already
holds a run is refused, so nothing written is overwritten.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longshort.config import PipelineConfig, dump_config, load_config, rl_run_config, sft_run_config
from longshort.errors import LongshortError
from longshort.io import (
    read_jsonl,
    save_figure_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

DONE = "DONE"
STARTED = "STARTED"
PACKAGES = ("longshort", "torch", "transformers", "trl", "datasets", "accelerate", "peft", "math-verify",
            "pydantic", "fastapi", "uvicorn", "vllm", "numpy", "matplotlib")


def _console():
    from rich.console import Console

    return Console(stderr=True)


# ----------------------------------------------------------------------------- run directory


def environment_manifest(seed: int) -> dict[str, Any]:
    """Package versions, Python, machine, seed and git revision of this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    git: dict[str, Any] = {}
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            git["revision"] = rev.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
            git["dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the manifest never fails a run
        pass
    return {"seed": seed, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "device": device, "packages": versions, "git": git,
            "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stage:
    """One pipeline stage: `run(ctx) -> summary` writes into `ctx.dir(name)`; `sections` are the
    config sections its result depends on (for the fingerprint checked on resume)."""

    name: str
    run: Callable[[RunContext], dict[str, Any]]
    sections: tuple[str, ...]
    description: str


class RunContext:
    """What a stage needs: the config, the run directory and the outputs of earlier stages."""

    def __init__(self, config: PipelineConfig, out: Path, resume: bool, console, config_path: str = ""):
        self.config, self.out, self.resume, self.console = config, out, resume, console
        self.config_path = config_path
        self.summaries: dict[str, dict[str, Any]] = {}

    def dir(self, stage: str) -> Path:
        d = self.out / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, msg: str) -> None:
        self.console.print(f"  {msg}")


def stage_fingerprint(config: PipelineConfig, stage: Stage) -> str:
    """A hash of the config sections (dotted paths) a stage's result depends on, plus the seed."""
    dumped = config.model_dump(mode="json")

    def get(path: str) -> Any:
        node: Any = dumped
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return fingerprint({s: get(s) for s in stage.sections} | {"seed": config.seed})


def run_pipeline(config_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 resume: bool = False) -> Path:
    """Run the recipe at `config_path` into `out_dir` (default `runs/<name>`). Returns the run dir."""
    config = load_config(config_path)
    out = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    console = _console()
    fingerprints = {stage.name: stage_fingerprint(config, stage) for stage in STAGES}
    _check_run_dir(out, resume, fingerprints)  # before anything is written
    _prepare_run_dir(out, config)
    _seed_everything(config.seed)
    ctx = RunContext(config, out, resume, console, str(config_path))
    manifest_path = out / "manifest.json"
    manifest = _read_json(manifest_path) or environment_manifest(config.seed)
    manifest.setdefault("stages", {})
    if resume:
        manifest.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json_atomic(manifest_path, manifest)
    t_all = time.time()
    for i, stage in enumerate(STAGES, start=1):
        done_path = out / stage.name / DONE
        fp = fingerprints[stage.name]
        if done_path.exists():
            done = json.loads(done_path.read_text())
            ctx.summaries[stage.name] = done.get("summary", {})
            console.print(f"[{i}/{len(STAGES)}] {stage.name}: done earlier, skipped ({done.get('seconds', 0):.0f} s then)")
            continue
        write_json_atomic(out / stage.name / STARTED, {"stage": stage.name, "fingerprint": fp})
        console.rule(f"[{i}/{len(STAGES)}] {stage.name}: {stage.description}")
        t0, c0 = time.time(), _cpu_seconds()
        summary = stage.run(ctx)
        seconds, cpu = time.time() - t0, _cpu_seconds() - c0
        ctx.summaries[stage.name] = summary
        write_json_atomic(done_path, {"stage": stage.name, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                                      "fingerprint": fp, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "summary": summary})
        manifest["stages"][stage.name] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}
        write_json_atomic(manifest_path, manifest)
        console.print(f"  {stage.name} finished in {seconds:.1f} s ({cpu:.0f} CPU-seconds)")
    manifest["total_seconds_this_invocation"] = round(time.time() - t_all, 2)
    write_json_atomic(manifest_path, manifest)
    return out


def _check_run_dir(out: Path, resume: bool, fingerprints: dict[str, str]) -> None:
    """Refuse a run directory that holds another run (without --resume), stages made with a
    different config, or a finished stage after an unfinished one (its inputs would change)."""
    if out.exists() and not out.is_dir():
        raise LongshortError(f"{out} exists and is not a directory")
    if (out / "config.yaml").exists():
        if not resume:
            raise LongshortError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise LongshortError(f"{out} exists, is not empty and holds no pipeline run; choose another --out")
    unfinished = None
    for stage in STAGES:
        fp = fingerprints[stage.name]
        done, started = out / stage.name / DONE, out / stage.name / STARTED
        if done.exists():
            if _read_json(done).get("fingerprint") != fp:
                raise LongshortError(f"{out}/{stage.name} was finished with a different config (sections "
                                     f"{', '.join(stage.sections)}); use a new --out directory")
            if unfinished is not None:
                raise LongshortError(f"{out}/{stage.name} is finished but the earlier stage {unfinished} is not, "
                                     f"so its inputs would change; remove {stage.name}/ and the later stage "
                                     "directories, or use a new --out")
        else:
            if started.exists() and _read_json(started).get("fingerprint") != fp:
                raise LongshortError(f"{out}/{stage.name} holds partial results made with a different config "
                                     f"(sections {', '.join(stage.sections)}); use a new --out directory")
            unfinished = unfinished or stage.name


def _prepare_run_dir(out: Path, config: PipelineConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = dump_config(config)
    cfg_path = out / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != resolved:
        # a resumed run whose recipe changed only in ways no finished stage depends on: keep the old
        write_text_atomic(out / f"config.{int(time.time())}.previous.yaml", cfg_path.read_text())
    write_text_atomic(cfg_path, resolved)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (accelerate-launched training)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    try:
        from transformers import set_seed

        set_seed(seed)
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------- engines


class _Engines:
    """Engines built once per stage and released at its end (training needs the memory)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._cache: dict[str, Any] = {}

    def get(self, spec: str):
        if spec not in self._cache:
            from longshort.engines import make_engine

            m = self.config.models
            kw = dict(m.engine_options)
            if m.engine == "openai":
                kw["base_url"] = m.base_url
            self._cache[spec] = make_engine(spec, m.engine, **kw)
        return self._cache[spec]

    def close(self) -> None:
        for engine in self._cache.values():
            engine.close()
        self._cache.clear()
        import gc

        gc.collect()


# ----------------------------------------------------------------------------- stages


def _eval_label(name: str, used: set[str]) -> str:
    label = Path(name).name.split(".")[0] if name.endswith((".jsonl", ".gz", ".json")) else name.replace(":", "_")
    label = label.replace("/", "_") or "set"
    base, k = label, 1
    while label in used:
        k += 1
        label = f"{base}{k}"
    used.add(label)
    return label


def stage_data(ctx: RunContext) -> dict[str, Any]:
    """Training traces (synthetic with planted truth, or a long-CoT file) and evaluation sets."""
    from longshort.evaluation.benchmarks import load_benchmark
    from longshort.io import ReadStats
    from longshort.thoughts import synthetic
    from longshort.thoughts.ingest import load_traces

    cfg, d = ctx.config, ctx.dir("data")
    stats = ReadStats()
    if cfg.data.source == "synthetic":
        traces = synthetic.generate(cfg.data.train, seed=cfg.seed, config=cfg.data.synthetic, id_prefix="synth-train-")
    else:
        traces = load_traces(cfg.data.traces, skip_bad=cfg.data.skip_bad, stats=stats)[: cfg.data.train]
    train_problems = {t["problem"].strip() for t in traces}
    write_jsonl_atomic(d / "traces.jsonl", traces)
    sets: dict[str, int] = {}
    used: set[str] = set()
    overlap_dropped = 0
    for ev in cfg.data.eval:
        label = _eval_label(ev.name, used)
        if ev.name == "synthetic":
            n = ev.limit or 32
            # a different seed stream from training; problems seen in training are dropped
            pool = synthetic.generate(n + len(train_problems), seed=cfg.seed + 7919, config=cfg.data.synthetic,
                                      id_prefix="synth-test-")
            fresh = [r for r in pool if r["problem"].strip() not in train_problems]
            overlap_dropped += len(pool) - len(fresh)
            problems = [{"id": r["id"], "problem": r["problem"], "answer": r["answer"], "benchmark": "synthetic",
                         "grading": "math"} for r in fresh[:n]]
        else:
            problems = load_benchmark(ev.name, data_dir=cfg.data.data_dir, limit=ev.limit, seed=cfg.seed)
        write_jsonl_atomic(d / "eval" / f"{label}.jsonl", problems)
        sets[label] = len(problems)
        ctx.log(f"eval set {label}: {len(problems)} problems")
    ctx.log(f"{len(traces)} training traces ({cfg.data.source})")
    return {"traces": len(traces), "skipped_bad_traces": stats.skipped, "eval_sets": sets,
            "planted_truth": all("gold_thoughts" in t for t in traces)}


def eval_sets(ctx: RunContext) -> dict[str, Path]:
    return {label: ctx.out / "data" / "eval" / f"{label}.jsonl" for label in ctx.summaries["data"]["eval_sets"]}


def stage_chunk(ctx: RunContext) -> dict[str, Any]:
    """Split every trace into thoughts; boundary quality against the planted truth."""
    from longshort.thoughts.chunking import chunk_records
    from longshort.thoughts.quality import boundary_prf

    cfg, d = ctx.config, ctx.dir("chunk")
    traces = read_jsonl(ctx.out / "data" / "traces.jsonl")
    engines = _Engines(cfg)
    try:
        engine = engines.get(cfg.models.scorer or cfg.models.base) if cfg.chunk.method == "llm" else None
        chunks = chunk_records(traces, cfg.chunk, engine=engine, progress=True)
    finally:
        engines.close()
    write_jsonl_atomic(d / "chunks.jsonl", chunks)
    n_thoughts = [len(c["thoughts"]) for c in chunks]
    categories: dict[str, int] = {}
    for c in chunks:
        for t in c["thoughts"]:
            categories[t.get("category", "other")] = categories.get(t.get("category", "other"), 0) + 1
    summary: dict[str, Any] = {"traces": len(chunks), "thoughts": sum(n_thoughts),
                               "thoughts_per_trace": round(sum(n_thoughts) / max(1, len(chunks)), 2),
                               "categories": categories, "method": cfg.chunk.method}
    gold = [c for c in chunks if c.get("gold_thoughts")]
    if gold:
        summary["boundary"] = boundary_prf([c["thoughts"] for c in gold], [c["gold_thoughts"] for c in gold])
        summary["boundary_tol1"] = boundary_prf([c["thoughts"] for c in gold], [c["gold_thoughts"] for c in gold],
                                                tolerance=1)
        ctx.log(f"boundary F1 vs planted truth: {summary['boundary']['f1']:.3f}")
    write_json_atomic(d / "quality.json", summary)
    return summary


def stage_score(ctx: RunContext) -> dict[str, Any]:
    """Monte Carlo importance of every thought (resumable per trace)."""
    from longshort.io import ResumableWriter
    from longshort.thoughts.importance import iter_score
    from longshort.thoughts.quality import gold_scores, importance_auroc

    cfg, d = ctx.config, ctx.dir("score")
    records = read_jsonl(ctx.out / "chunk" / "chunks.jsonl")
    engines = _Engines(cfg)
    with ResumableWriter(d / "scored.jsonl", resume=True) as writer:
        todo = [r for r in records if str(r["id"]) not in writer.done_ids]
        if len(todo) < len(records):
            ctx.log(f"resuming: {len(records) - len(todo)} traces already scored")
        try:
            if todo:
                engine = engines.get(cfg.models.scorer or cfg.models.base)
                for rec in iter_score(todo, engine, cfg.score, progress=True):
                    writer.write(rec)
        finally:
            engines.close()
        scored = list(writer.records)
    by_cat: dict[str, list[float]] = {}
    for r in scored:
        for t in r["thoughts"]:
            if t.get("score") is not None:
                by_cat.setdefault(t.get("category", "other"), []).append(float(t["score"]))
    summary: dict[str, Any] = {
        "traces": len(scored), "rollouts": sum(r.get("importance", {}).get("num_rollouts", 0) for r in scored),
        "generated_tokens": sum(r.get("importance", {}).get("generated_tokens", 0) for r in scored),
        "importance_by_category": {c: {"n": len(v), "mean": round(sum(v) / len(v), 4),
                                       "positive_share": round(sum(x > 0 for x in v) / len(v), 4)}
                                   for c, v in sorted(by_cat.items())},
    }
    if any(r.get("gold_thoughts") for r in scored):
        summary["auroc"] = importance_auroc(scored)
        by_kind: dict[str, list[float]] = {}
        for r in scored:
            if r.get("gold_thoughts"):
                for g, sc in zip(r["gold_thoughts"], gold_scores(r["thoughts"], r["gold_thoughts"]), strict=True):
                    if sc is not None:
                        by_kind.setdefault(g.get("kind", "essential" if g.get("essential") else "redundant"),
                                           []).append(float(sc))
        summary["importance_by_planted_kind"] = {k: {"n": len(v), "mean": round(sum(v) / len(v), 4)}
                                                 for k, v in sorted(by_kind.items())}
        ctx.log(f"importance AUROC essential vs redundant: {summary['auroc']['auroc']}")
    write_json_atomic(d / "quality.json", summary)
    return summary


def stage_coldstart(ctx: RunContext) -> dict[str, Any]:
    """Assign thoughts to roles, compress the short ones, write one SFT set per role."""
    from longshort.thoughts.coldstart import synthesize

    cfg, d = ctx.config, ctx.dir("coldstart")
    scored = read_jsonl(ctx.out / "score" / "scored.jsonl")
    engines = _Engines(cfg)
    try:
        engine = engines.get(cfg.models.base) if cfg.coldstart.compressor == "llm" else None
        long_ex, short_ex, stats = synthesize(scored, cfg.coldstart, engine=engine,
                                              count_tokens=engine.count_tokens if engine else None)
    finally:
        engines.close()
    if not long_ex or not short_ex:
        raise LongshortError(f"cold start produced {len(long_ex)} long and {len(short_ex)} short examples "
                             f"from {len(scored)} traces (skipped as incorrect: {stats.get('skipped_incorrect')}); "
                             "both roles need data: use more or better traces, or relax coldstart settings")
    write_jsonl_atomic(d / "long.jsonl", long_ex)
    write_jsonl_atomic(d / "short.jsonl", short_ex)
    write_json_atomic(d / "stats.json", stats)
    ctx.log(f"{len(long_ex)} long and {len(short_ex)} short examples; token share long "
            f"{stats['token_share']['long']:.0%}, compression {stats['compression_ratio']}")
    return {k: stats[k] for k in ("dialogues", "examples", "token_share", "compression_ratio", "turns_per_dialogue",
                                  "skipped_incorrect") if k in stats}


def baseline_examples(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT examples for the long-CoT baseline: the whole trace as one solo long-CoT answer, in
    the coldstart example format (the analogue of distilling R1 traces into the base model)."""
    from longshort.dialogue.protocol import render_input

    out = []
    for t in traces:
        messages, prefix = render_input("long", t["problem"], [], solo=True)
        out.append({"id": f"{t['id']}-full", "source_id": t["id"], "role": "long", "problem": t["problem"],
                    "answer": str(t["answer"]), "prompt": messages, "assistant_prefix": prefix,
                    "completion": t["response"].strip()})
    return out


def stage_sft(ctx: RunContext) -> dict[str, Any]:
    """Cold-start SFT of the long and the short model (and the distilled long-CoT baseline)."""
    from longshort.training.sft import run_sft

    cfg, d = ctx.config, ctx.dir("sft")
    jobs = [("long", ctx.out / "coldstart" / "long.jsonl"), ("short", ctx.out / "coldstart" / "short.jsonl")]
    if cfg.eval.baseline == "distill":
        data = d / "baseline_data.jsonl"
        write_jsonl_atomic(data, baseline_examples(read_jsonl(ctx.out / "data" / "traces.jsonl")))
        jobs.append(("baseline", data))
    summary: dict[str, Any] = {}
    for name, data in jobs:
        ctx.log(f"SFT {name} on {data.name}")
        run_cfg = sft_run_config(cfg, role="long" if name == "baseline" else name, data=str(data),
                                 model=cfg.models.base, out=str(d / name))
        if cfg.launch.accelerate_config is None:
            out = run_sft(run_cfg)
        else:
            out = _launch(ctx, "sft", run_cfg, d / f"{name}.run.json",
                          ["--role", run_cfg.role, "--data", run_cfg.data, "--model", run_cfg.model,
                           "--out", run_cfg.out, "--resume"])
        m = _read_json(Path(out) / "metrics.json").get("metrics", {})
        summary[name] = {"model": str(out), "train_loss": m.get("train_loss"), "examples": m.get("examples"),
                         "wall_s": m.get("wall_s")}
    return summary


def _launch(ctx: RunContext, command: str, run_cfg: Any, cfg_path: Path, required: list[str]) -> str:
    """Run `longshort sft|rl` under `accelerate launch` (multi-GPU, DeepSpeed) with the stage's
    full run config in a JSON file; the required options repeat what the file says."""
    write_json_atomic(cfg_path, run_cfg.model_dump(mode="json"))
    launch = ctx.config.launch
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch.accelerate_config)]
    if launch.num_processes:
        argv += ["--num_processes", str(launch.num_processes)]
    argv += ["-m", "longshort.cli", command, "--config", str(cfg_path), *required]
    ctx.log("launching: " + " ".join(argv))
    proc = subprocess.run(argv)
    if proc.returncode != 0:
        raise LongshortError(f"`{command}` under accelerate launch failed (exit {proc.returncode}); rerun with "
                             "--resume to continue from its last checkpoint")
    return run_cfg.out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


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
        out = Path(_launch(ctx, "rl", run_cfg, d / "rl.run.json",
                           ["--long", run_cfg.long, "--short", run_cfg.short, "--data", run_cfg.data,
                            "--out", run_cfg.out, "--resume"]))
    marker = _read_json(out / "longshort_run.json")
    final = marker.get("final") or {}
    if not final.get("long") or not final.get("short"):
        raise LongshortError(f"RL finished without naming its final models ({out / 'longshort_run.json'})")
    history = []
    for it in marker.get("iterations", []):
        m = _read_json(Path(it["dir"]) / "metrics.json")
        logs = [h for h in m.get("log_history", []) if "reward" in h]
        history.append({"iteration": it["iteration"], "role": it["role"],
                        "reward_first": logs[0]["reward"] if logs else None,
                        "reward_last": logs[-1]["reward"] if logs else None, "steps": len(logs),
                        "wall_s": (m.get("metrics") or {}).get("wall_s")})
    return {"long": final["long"], "short": final["short"], "iterations": len(history),
            "schedule": [h["role"] for h in history], "history": history}


def final_models(ctx: RunContext) -> dict[str, str]:
    """The tuned pair: the RL stage's last long and short models."""
    rl = ctx.summaries["rl"]
    return {"long": rl["long"], "short": rl["short"]}


def stage_eval(ctx: RunContext) -> dict[str, Any]:
    """Every system on every evaluation set through the evaluation harness (resumable)."""
    from longshort.harness import EvalConfig, run_eval

    cfg, d = ctx.config, ctx.dir("eval")
    tuned = final_models(ctx)
    sft = ctx.summaries["sft"]
    baseline_model = sft["baseline"]["model"] if cfg.eval.baseline == "distill" else cfg.models.base
    systems = {
        "baseline": ("long", baseline_model, None),
        "pair": ("collab", tuned["long"], tuned["short"]),
        "pair_sft": ("collab", sft["long"]["model"], sft["short"]["model"]),
        "short": ("short", None, tuned["short"]),
    }
    order = ["baseline"] + [s for s in cfg.eval.systems if s != "baseline"]  # AES needs the baseline first
    sets = eval_sets(ctx)
    results: dict[str, dict[str, Any]] = {label: {} for label in sets}
    engines = _Engines(cfg)
    for system in order:
        mode, long_model, short_model = systems[system]
        try:
            le = engines.get(long_model) if long_model else None
            se = engines.get(short_model) if short_model else None
            for label, path in sets.items():
                out = d / label / system
                ctx.log(f"{system} ({mode}) on {label}")
                ecfg = EvalConfig(benchmark=str(path), mode=mode, long_model=long_model or short_model,
                                  short_model=short_model or long_model, engine=cfg.models.engine,
                                  base_url=cfg.models.base_url, samples=cfg.eval.samples, seed=cfg.seed,
                                  collab=cfg.eval.collab,
                                  baseline_dir=None if system == "baseline" else str(d / label / "baseline"))
                m = run_eval(ecfg, out, resume=True, progress=True, engines=(le, se),
                             command=f"longshort pipeline (stage eval, system {system})")
                results[label][system] = _eval_summary(m, mode, long_model, short_model)
        finally:
            engines.close()
    write_json_atomic(d / "results.json", results)
    return {"results": results}


def _eval_summary(m: dict[str, Any], mode: str, long_model: str | None, short_model: str | None) -> dict[str, Any]:
    aes = m.get("aes") or {}
    return {"mode": mode, "long_model": long_model, "short_model": short_model, "problems": m["problems"],
            "samples": m["samples_per_problem"], "accuracy": m["accuracy"], "pass_at_1": m["pass_at_1"],
            "tokens": m["tokens"], "turns": m["turns"], "finish_by_length_rate": m["finish_by_length_rate"],
            "format_violation_rate": m["format_violation_rate"], "no_answer_rate": m.get("no_answer_rate"),
            "aes": aes.get("aes"), "delta_accuracy": aes.get("delta_accuracy"),
            "delta_length": aes.get("delta_length"), "wall_seconds": m.get("wall_seconds")}


# ----------------------------------------------------------------------------- report

SYSTEM_NAMES = {"pair": "Long⊗Short pair (SFT+RL)", "pair_sft": "Long⊗Short pair (SFT only)",
                "baseline": "long-CoT baseline", "short": "short model alone"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _signed_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per evaluation set: the tuned pair against the long-CoT baseline (token reduction,
    accuracy difference in points, AES)."""
    out = {}
    for label, systems in results.items():
        pair, base = systems.get("pair"), systems.get("baseline")
        if not pair or not base:
            continue
        bt, pt = base["tokens"]["total"], pair["tokens"]["total"]
        out[label] = {"token_reduction": None if not bt else round(1 - pt / bt, 4),
                      "accuracy_pair": pair["accuracy"], "accuracy_baseline": base["accuracy"],
                      "accuracy_difference_points": round(100 * (pair["accuracy"] - base["accuracy"]), 2),
                      "tokens_pair": pt, "tokens_baseline": bt, "aes": pair.get("aes")}
    return out


def _interval(r: dict[str, Any]) -> dict[str, float | None]:
    """The 95% interval, made to contain the mean (rounded bounds can fall a hair inside it)."""
    low, high, acc = r["pass_at_1"].get("low"), r["pass_at_1"].get("high"), r["accuracy"]
    if low is None or high is None:
        return {"low": None, "high": None}
    return {"low": min(low, acc), "high": max(high, acc)}


def _plot_importance(by_cat: dict[str, dict[str, Any]], path: Path) -> Path | None:
    if not by_cat:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(by_cat, key=lambda c: by_cat[c]["mean"], reverse=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    try:
        ax.bar(cats, [by_cat[c]["mean"] for c in cats], color="#4C72B0")
        for i, c in enumerate(cats):
            ax.annotate(f"n={by_cat[c]['n']}", (i, by_cat[c]["mean"]), ha="center", va="bottom", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("mean importance score s_i")
        ax.set_title("Monte Carlo importance per thought category")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)
    return path


def _example_dialogues(ctx: RunContext, k: int) -> list[dict[str, Any]]:
    """The first `k` pair dialogues of the first evaluation set, right answers first."""
    if k == 0:
        return []
    for label in eval_sets(ctx):
        path = ctx.out / "eval" / label / "pair" / "predictions.jsonl"
        if path.exists():
            recs = read_jsonl(path)
            recs.sort(key=lambda r: (not r.get("correct"), str(r.get("id"))))
            return [{**r, "_set": label} for r in recs[:k]]
    return []


def _render_dialogue(rec: dict[str, Any], max_chars: int) -> list[str]:
    lines = [f"**{rec['_set']} · `{rec['id']}`** — gold `{rec.get('answer')}`, final answer "
             f"`{rec.get('final_answer')}` ({'right' if rec.get('correct') else 'wrong'}); tokens long "
             f"{rec['tokens']['long']}, short {rec['tokens']['short']}; flags: {', '.join(rec.get('flags') or []) or 'none'}",
             "", f"> {rec['problem']}", ""]
    for t in rec["turns"]:
        text = t["text"] if len(t["text"]) <= max_chars else t["text"][:max_chars] + " …[cut]"
        lines += [f"*{t['role']}* ({t['tokens']} tokens, {t['finish_reason']})", "", "```text", text.replace("```", "ʼʼʼ"),
                  "```", ""]
    return lines


def stage_report(ctx: RunContext) -> dict[str, Any]:
    """metrics.json, report.md and the plots (accuracy vs tokens, importance per category)."""
    from longshort.evaluation.report import plot_accuracy_vs_tokens

    cfg, out = ctx.config, ctx.out
    rdir = ctx.dir("report")
    s = ctx.summaries
    results = s["eval"]["results"]
    head = headline(results)
    manifest = _read_json(out / "manifest.json")
    metrics = {"name": cfg.name, "seed": cfg.seed, "headline": head, "eval": results,
               "chunking": {k: s["chunk"].get(k) for k in ("method", "thoughts_per_trace", "boundary", "boundary_tol1")},
               "importance": {k: s["score"].get(k) for k in ("auroc", "importance_by_category", "rollouts",
                                                              "generated_tokens", "importance_by_planted_kind")},
               "coldstart": s["coldstart"], "sft": s["sft"], "rl": s["rl"], "data": s["data"],
               "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
               "environment": {k: manifest.get(k) for k in ("python", "platform", "cpu_count", "device", "git",
                                                            "packages")}}
    plots: dict[str, str] = {}
    for label, systems in results.items():
        rows = [{"run": SYSTEM_NAMES.get(name, name), "benchmark": label, "mode": r["mode"],
                 "accuracy": r["accuracy"], "tokens": r["tokens"]["total"], **_interval(r)}
                for name, r in systems.items()]
        p = plot_accuracy_vs_tokens(rows, rdir / f"accuracy_vs_tokens_{label}.png",
                                    title=f"Accuracy vs generated tokens · {label}")
        plots[f"accuracy_vs_tokens_{label}"] = str(p.relative_to(out))
    imp = _plot_importance(s["score"].get("importance_by_category") or {}, rdir / "importance_by_category.png")
    if imp is not None:
        plots["importance_by_category"] = str(imp.relative_to(out))
    metrics["plots"] = plots
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report_md(ctx, metrics))
    return {"headline": head, "plots": plots}


def render_report_md(ctx: RunContext, m: dict[str, Any]) -> str:
    cfg = ctx.config
    env = m["environment"]
    lines = [f"# Long⊗Short pipeline report: {cfg.name}", "",
             f"- command: `longshort pipeline {ctx.config_path} --out {ctx.out}`",
             f"- base model `{cfg.models.base}`, engine `{cfg.models.engine}`, seed {cfg.seed}; "
             f"device {env.get('device')}, {env.get('cpu_count')} CPUs; git {(env.get('git') or {}).get('revision', '?')[:12]}"
             f"{' (dirty)' if (env.get('git') or {}).get('dirty') else ''}",
             f"- training data: {m['data']['traces']} {cfg.data.source} traces"
             f"{' with planted importance' if m['data'].get('planted_truth') else ''}; stage times: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in m["stage_seconds"].items() if v is not None), ""]
    if m["headline"]:
        lines += ["## Headline: the tuned pair against the long-CoT baseline", ""]
        for label, h in m["headline"].items():
            lines.append(f"- **{label}**: tokens {_num(h['tokens_baseline'])} → {_num(h['tokens_pair'])} "
                         f"({_signed_pct(-h['token_reduction'] if h['token_reduction'] is not None else None)}), "
                         f"accuracy {_pct(h['accuracy_baseline'])} → {_pct(h['accuracy_pair'])} "
                         f"({h['accuracy_difference_points']:+.1f} points), AES "
                         f"{'–' if h['aes'] is None else format(h['aes'], '.3f')}")
        lines.append("")
    baseline_desc = ("the base model fine-tuned on the full long-CoT traces, answering alone in long CoT"
                     if cfg.eval.baseline == "distill" else "the base model answering alone in long CoT")
    lines += ["## Results", "", f"Baseline: {baseline_desc}. Tokens are mean generated tokens per sample "
              "(prompt tokens excluded). AES against the baseline (η=1, ς₊=3, ς₋=5).", ""]
    for label, systems in m["eval"].items():
        lines += [f"### {label}", "", "| system | mode | problems × k | Pass@1 | 95% CI | tokens total | long | short "
                  "| turns | ΔA | ΔL | AES |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in systems.items():
            p1 = r["pass_at_1"]
            ci = "–" if p1.get("low") is None else f"[{_pct(p1['low'])}, {_pct(p1['high'])}]"
            lines.append(f"| {SYSTEM_NAMES.get(name, name)} | {r['mode']} | {r['problems']} × {r['samples']} | "
                         f"{_pct(r['accuracy'])} | {ci} | {_num(r['tokens']['total'])} | {_num(r['tokens']['long'])} | "
                         f"{_num(r['tokens']['short'])} | {_num(r['turns'], 2)} | {_signed_pct(r.get('delta_accuracy'))} | "
                         f"{_signed_pct(r.get('delta_length'))} | {'–' if r.get('aes') is None else format(r['aes'], '.3f')} |")
        plot = m["plots"].get(f"accuracy_vs_tokens_{label}")
        if plot:
            lines += ["", f"![accuracy vs tokens on {label}]({plot})"]
        lines.append("")
    ch, im = m["chunking"], m["importance"]
    lines += ["## Thoughts: chunking and importance", ""]
    if ch.get("boundary"):
        b, b1 = ch["boundary"], ch.get("boundary_tol1") or {}
        lines += [f"- chunker `{ch['method']}`: {ch['thoughts_per_trace']} thoughts per trace; boundary precision "
                  f"{b['precision']:.3f}, recall {b['recall']:.3f}, **F1 {b['f1']:.3f}** against the planted "
                  f"thoughts (±1 step: F1 {b1.get('f1', float('nan')):.3f})"]
    else:
        lines += [f"- chunker `{ch['method']}`: {ch['thoughts_per_trace']} thoughts per trace (no planted truth "
                  "in this data, so no boundary F1)"]
    au = im.get("auroc")
    if au:
        lines += [f"- importance AUROC, essential vs redundant planted thoughts: **{au['auroc']}** "
                  f"({au['essential']} essential, {au['redundant']} redundant; 0.5 = chance)"]
    if im.get("importance_by_planted_kind"):
        lines += ["- mean importance by planted kind: " + ", ".join(
            f"{k} {v['mean']:+.4f} (n={v['n']})" for k, v in im["importance_by_planted_kind"].items())]
    lines += [f"- Monte Carlo scoring: {im.get('rollouts')} rollouts, {im.get('generated_tokens')} generated tokens "
              f"(R = {cfg.score.rollouts}, δ = {cfg.score.delta})", "",
              "| category | thoughts | mean score | share with score > 0 |", "|---|---|---|---|"]
    for cat, v in sorted((im.get("importance_by_category") or {}).items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {cat} | {v['n']} | {v['mean']:+.4f} | {_pct(v['positive_share'])} |")
    if m["plots"].get("importance_by_category"):
        lines += ["", f"![importance per category]({m['plots']['importance_by_category']})"]
    cs = m["coldstart"]
    lines += ["", "## Cold start and training", "",
              f"- cold start: {cs.get('dialogues')} dialogues → {cs.get('examples', {}).get('long')} long and "
              f"{cs.get('examples', {}).get('short')} short examples; token share long "
              f"{_pct((cs.get('token_share') or {}).get('long'))}; compression ratio {cs.get('compression_ratio')}"]
    for name, v in m["sft"].items():
        lines.append(f"- SFT {name}: {v.get('examples')} examples, train loss {_num(v.get('train_loss'), 4)}, "
                     f"{_num(v.get('wall_s'))} s")
    rl = m["rl"]
    lines.append(f"- RL: {rl.get('iterations')} alternating iterations ({' → '.join(rl.get('schedule', []))}), "
                 "mean reward at the first → last logged step:")
    for h in rl.get("history", []):
        lines.append(f"  - iteration {h['iteration']} ({h['role']} trained): {_num(h.get('reward_first'), 3)} → "
                     f"{_num(h.get('reward_last'), 3)} over {h.get('steps')} logged steps, {_num(h.get('wall_s'))} s")
    examples = _example_dialogues(ctx, cfg.report.example_dialogues)
    if examples:
        lines += ["", "## Example dialogue of the tuned pair", ""]
        for rec in examples:
            lines += _render_dialogue(rec, cfg.report.max_example_chars)
    lines += ["## Files", "", "`config.yaml` (resolved recipe), `manifest.json` (environment, timings), `metrics.json`, "
              "stage outputs in `data/ chunk/ score/ coldstart/ sft/ rl/ eval/`, plots in `report/`.", ""]
    return "\n".join(lines)


STAGES: list[Stage] = [
    Stage("data", stage_data, ("data",), "training traces and evaluation sets"),
    Stage("chunk", stage_chunk, ("data", "chunk", "models"), "split traces into thoughts"),
    Stage("score", stage_score, ("data", "chunk", "score", "models"), "Monte Carlo importance of every thought"),
    Stage("coldstart", stage_coldstart, ("data", "chunk", "score", "coldstart", "models"),
          "assign thoughts to roles, build the SFT sets"),
    Stage("sft", stage_sft, ("data", "chunk", "score", "coldstart", "models", "sft", "eval.baseline"),
          "cold-start SFT of both roles (and the long-CoT baseline)"),
    Stage("rl", stage_rl, ("data", "chunk", "score", "coldstart", "models", "sft", "rl"),
          "alternating multi-turn RL of the pair"),
    Stage("eval", stage_eval, ("data", "chunk", "score", "coldstart", "models", "sft", "rl", "eval"),
          "the pair, the long-CoT baseline and the short model on every evaluation set"),
    Stage("report", stage_report, ("data", "chunk", "score", "coldstart", "models", "sft", "rl", "eval", "report"),
          "metrics.json, report.md, plots"),
]
