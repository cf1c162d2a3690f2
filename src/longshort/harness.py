"""The evaluation harness: benchmark → dialogues → grades → metrics → report (DESIGN §7–§8).

`run_eval(config, out_dir)` loads a benchmark, builds the engines, solves every problem k
times in the chosen mode (`collab`, `long`, `short`) with the same solver and grading for all
three, and writes a run directory:

    OUT/config.json        the resolved EvalConfig (checked on resume: same benchmark, mode, models)
    OUT/predictions.jsonl  one dialogue record per problem × sample, plus `correct` and `grade`
                           (appended as they finish; a rerun skips the ids already there)
    OUT/metrics.json       summarize() numbers + AES vs a baseline + config + environment manifest
    OUT/report.md          the human summary

Everything that can be checked without a model (benchmark, baseline, run directory) is checked
before the engines are built, so bad input fails fast and nothing written is damaged.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from longshort.dialogue.collab import CollabConfig, iter_solve
from longshort.errors import InputError, LongshortError
from longshort.evaluation.benchmarks import load_benchmark
from longshort.evaluation.grading import GradingConfig, grade_detail
from longshort.evaluation.metrics import aes_against, summarize
from longshort.evaluation.report import render_report
from longshort.io import ReadStats, ResumableWriter, write_json_atomic, write_text_atomic
from longshort.rundir import environment_manifest

PASSTHROUGH = ("answer", "choices", "benchmark", "grading", "subject", "level")
# Fields of config.json that must match when a run directory is resumed.
PRED_FIELDS = ("turns", "problem_id")  # what every record of predictions.jsonl holds
IDENTITY = ("benchmark", "mode", "long_model", "short_model", "samples", "seed")


class EvalConfig(BaseModel):
    """One evaluation run: what to solve, with which models, and how."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str = Field(..., description="Benchmark name (math500, gsm8k, ...), a JSONL path, or "
                                            "hub:DATASET[:CONFIG][@SPLIT]; no default: a run must say what it measures.")
    mode: Literal["collab", "long", "short"] = Field(
        "collab", description="collab = the pair; long = the long model alone (long CoT, the usual "
                              "AES baseline); short = the short model alone (concise).")
    long_model: str = Field("smollm2-135m", description="Long-thought model spec (the embedded default "
                                                        "runs offline on CPU).")
    short_model: str = Field("smollm2-135m", description="Short-thought model spec (same default; one "
                                                         "engine is shared when both specs are equal).")
    engine: str = Field("transformers", description="Generation backend: transformers (in-process, "
                                                    "default), openai (a server at base_url), vllm (GPU).")
    base_url: str | None = Field(None, description="OpenAI-compatible server URL for engine=openai.")
    long_base_url: str | None = Field(None, description="The long model's own server (engine=openai; over base_url).")
    short_base_url: str | None = Field(None, description="The short model's own server (engine=openai; over base_url).")
    samples: int = Field(1, ge=1, description="Samples per problem for Pass@1 (1: cheapest; the paper "
                                              "style uses several, e.g. 4-16, to narrow the interval).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems (None: all).")
    data_dir: str | None = Field(None, description="Benchmark data directory (None: $LONGSHORT_DATA, "
                                                   "else ../shared/benchmarks when it exists).")
    seed: int = Field(0, description="Base seed of sampling and of GPQA's choice order (0: reproducible).")
    skip_bad: bool = Field(False, description="Skip (and count) bad benchmark records instead of stopping "
                                              "(off: a bad record stops the run before any work is wasted).")
    interval: Literal["auto", "bootstrap", "normal"] = Field(
        "auto", description="95% interval of Pass@1, monotone in the number correct: auto (Wilson over "
                            "problems for 1 sample each, else bootstrap over problem means) or bootstrap "
                            "(also for 1 sample); normal = the former name of auto.")
    baseline_dir: str | None = Field(None, description="A finished run directory to compute AES against "
                                                       "(must be the same benchmark).")
    collab: CollabConfig = Field(default_factory=CollabConfig,
                                 description="Solver settings (turns, token limits, temperature).")
    grading: GradingConfig = Field(default_factory=GradingConfig, description="Answer-judging settings.")


def load_run_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of a finished run directory (clear error when it is not one)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise InputError("run directory not found", path=str(run_dir))
    if not path.exists():
        raise InputError("no metrics.json: not a finished evaluation run", path=str(run_dir))
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg})", path=str(path), line=exc.lineno) from None
    except (UnicodeDecodeError, ValueError) as exc:  # not UTF-8; an integer past Python's digit limit
        raise InputError(f"unreadable ({str(exc).split(';')[0]})", path=str(path)) from None
    if not isinstance(m, dict):
        raise InputError("expected a JSON object", path=str(path))
    for key in ("benchmark", "pass_at_1", "tokens", "accuracy"):
        if key not in m:
            raise InputError("missing", path=str(path), field=key)
    return m


def _check_run_dir(out: Path, cfg: EvalConfig, resume: bool) -> None:
    """Refuse to resume into a directory that holds a different run."""
    path = out / "config.json"
    if not resume or not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError("malformed config.json in the run directory", path=str(path)) from None
    new = cfg.model_dump()
    for key in IDENTITY:
        if old.get(key) != new.get(key):
            raise InputError(
                f"run directory holds a different run ({key}: {old.get(key)!r}, now {new.get(key)!r}); "
                "use another --out, or --no-resume to start it over", path=str(out), field=key)
    if old.get("collab") != new.get("collab"):
        raise InputError("run directory was made with different solver settings (token limits, turns, "
                         "temperature); use another --out, or --no-resume", path=str(out), field="collab")


def grade_record(rec: dict[str, Any], grading: GradingConfig | None = None) -> dict[str, Any]:
    """Add `correct` and `grade` {extracted, method} to a dialogue record (graded on its
    `final_answer`, the last boxed answer of the dialogue; none = wrong)."""
    answer = rec.get("final_answer")
    prediction = f"\\boxed{{{answer}}}" if answer else ""
    res = grade_detail(prediction, str(rec["answer"]), choices=rec.get("choices"), config=grading)
    rec["correct"] = bool(res.correct)
    rec["grade"] = {"extracted": res.extracted, "method": res.method}
    return rec


def _build_engines(cfg: EvalConfig):
    from longshort.engines import make_pair

    return make_pair(cfg.long_model if cfg.mode in ("collab", "long") else None,
                     cfg.short_model if cfg.mode in ("collab", "short") else None, cfg.engine, base_url=cfg.base_url,
                     long_base_url=cfg.long_base_url, short_base_url=cfg.short_base_url)


def run_eval(config: EvalConfig, out_dir: str | Path, *, resume: bool = True, progress: bool = True,
             engines: tuple[Any, Any] | None = None, command: str | None = None) -> dict[str, Any]:
    """Run one evaluation into `out_dir` and return its metrics (also written to metrics.json).

    `engines` = (long_engine, short_engine) to reuse already-built engines (tests, pipeline);
    otherwise they are built from the config with `longshort.engines.make_engine`.
    """
    t0 = time.perf_counter()
    cfg = config.model_copy(update={"collab": config.collab.model_copy(
        update={"samples": config.samples, "seed": config.seed})})
    out = Path(out_dir)
    # 1. everything checkable without a model, before anything is written
    read_stats = ReadStats()
    problems = load_benchmark(cfg.benchmark, data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed,
                              skip_bad=cfg.skip_bad, stats=read_stats)
    benchmark_name = problems[0]["benchmark"]
    baseline = None
    if cfg.baseline_dir:
        baseline = load_run_metrics(cfg.baseline_dir)
        if baseline["benchmark"] != benchmark_name:
            raise InputError(f"baseline ran benchmark {baseline['benchmark']!r}, this run is "
                             f"{benchmark_name!r}; AES needs the same benchmark",
                             path=str(cfg.baseline_dir), field="benchmark")
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", path=str(out))
    _check_run_dir(out, cfg, resume)

    # 2. run (engines are built before anything old is replaced: a failed load damages nothing)
    solve_input = [{"id": p["id"], "problem": p["problem"], **{k: p[k] for k in PASSTHROUGH if k in p}}
                   for p in problems]
    ids = {p["id"] for p in problems}
    expected = len(problems) * cfg.samples
    pred_path = out / "predictions.jsonl"
    # checks the old predictions (a bad line in the middle, or records that are not dialogue
    # records, stop here and change nothing; only a torn last line is dropped)
    writer = ResumableWriter(pred_path, resume=True, expect=PRED_FIELDS, skip_bad=cfg.skip_bad) \
        if resume and pred_path.exists() else None
    todo = expected - (sum(1 for r in writer.records if str(r.get("problem_id")) in ids) if writer else 0)
    owned = engines is None and todo > 0
    long_engine, short_engine = engines if engines is not None else (
        _build_engines(cfg) if todo > 0 else (None, None))
    out.mkdir(parents=True, exist_ok=True)
    if writer is None:
        writer = ResumableWriter(pred_path, resume=resume, expect=PRED_FIELDS, skip_bad=cfg.skip_bad)
    write_json_atomic(out / "config.json", cfg.model_dump())
    try:
        if todo > 0:
            with writer:
                for rec in iter_solve(solve_input, long_engine=long_engine, short_engine=short_engine,
                                      config=cfg.collab, mode=cfg.mode, progress=progress,
                                      skip_ids=writer.done_ids):
                    writer.write(grade_record(rec, cfg.grading))
    finally:
        if owned:
            for e in {id(x): x for x in (long_engine, short_engine) if x is not None}.values():
                e.close()

    # 3. metrics and report
    records = [r for r in writer.records if str(r.get("problem_id")) in ids]
    if not records:
        raise LongshortError(f"no predictions were produced in {out}")
    for r in records:  # records from an older grader version, or graded elsewhere
        if "correct" not in r:
            grade_record(r, cfg.grading)
    metrics: dict[str, Any] = {
        "benchmark": benchmark_name,
        "mode": cfg.mode,
        "models": {"long": cfg.long_model if cfg.mode != "short" else None,
                   "short": cfg.short_model if cfg.mode != "long" else None},
        **summarize(records, method=cfg.interval),
        "complete": len(records) >= expected,
        "skipped_bad_records": read_stats.skipped,
    }
    if baseline is not None:
        metrics["aes"] = {**aes_against(metrics, baseline), "baseline_dir": str(cfg.baseline_dir),
                          "baseline_mode": baseline.get("mode"),
                          "same_problems": baseline.get("problems") == metrics["problems"]}
    metrics.update({
        "config": cfg.model_dump(),
        "environment": environment_manifest(cfg.seed),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report(metrics))
    return metrics
