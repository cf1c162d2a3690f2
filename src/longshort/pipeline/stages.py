"""The data-side stages: data, chunk, baseline (the long-CoT baseline's SFT), score, coldstart.

Each is `stage_NAME(ctx) -> summary`, a thin call into that area's library function with its
inputs and outputs in the run directory (see `longshort.pipeline`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longshort.errors import LongshortError
from longshort.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from longshort.pipeline.context import Engines, RunContext


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
    """Training traces (synthetic with planted truth, or a long-CoT file) and evaluation sets.
    Held-out synthetic problems keep their planted traces (`data/eval/LABEL.traces.jsonl`), so the
    report can split the baseline's tokens by planted kind."""
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
    sets: dict[str, int] = {}
    used: set[str] = set()
    overlap_dropped = 0
    loaded: dict[str, list[dict[str, Any]]] = {}
    for ev in cfg.data.eval:
        label = _eval_label(ev.name, used)
        if ev.name == "synthetic":
            n = ev.limit or 32
            # a different seed stream from training; problems seen in training are dropped
            pool = synthetic.generate(n + len(train_problems), seed=cfg.seed + 7919, config=cfg.data.synthetic,
                                      id_prefix="synth-test-")
            fresh = [r for r in pool if r["problem"].strip() not in train_problems][:n]
            overlap_dropped += len(pool) - len(fresh)
            write_jsonl_atomic(d / "eval" / f"{label}.traces.jsonl", fresh)
            problems = [{"id": r["id"], "problem": r["problem"], "answer": r["answer"], "benchmark": "synthetic",
                         "grading": "math"} for r in fresh]
        else:
            problems = load_benchmark(ev.name, data_dir=cfg.data.data_dir, limit=ev.limit, seed=cfg.seed)
        loaded[label] = problems
        write_jsonl_atomic(d / "eval" / f"{label}.jsonl", problems)
        sets[label] = len(problems)
        ctx.log(f"eval set {label}: {len(problems)} problems")
    decontam: dict[str, Any] = {}
    if cfg.data.decontaminate:
        traces, decontam = _decontaminate(traces, loaded, cfg)
    write_jsonl_atomic(d / "traces.jsonl", traces)
    ctx.log(f"{len(traces)} training traces ({cfg.data.source})")
    if not traces:
        raise LongshortError("no training traces left (all were dropped as bad or as overlapping an evaluation set)")
    return {"traces": len(traces), "skipped_bad_traces": stats.skipped, "eval_sets": sets,
            "planted_truth": all("gold_thoughts" in t for t in traces), "decontamination": decontam}


def _decontaminate(traces: list[dict[str, Any]], sets: dict[str, list[dict[str, Any]]], cfg: Any
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop training traces whose problem (normalised) is in an evaluation set or a named benchmark."""
    try:
        from longshort.thoughts.decontam import decontaminate
    except ImportError:  # pragma: no cover - the module lands with the chunking work
        return traces, {}
    from longshort.evaluation.benchmarks import load_benchmark

    refs = {label: [p["problem"] for p in probs] for label, probs in sets.items()}
    for name in cfg.data.decontaminate_against:
        refs.setdefault(name, [p["problem"] for p in load_benchmark(name, data_dir=cfg.data.data_dir)])
    kept, report = decontaminate(traces, refs)
    return kept, report


def eval_sets(ctx: RunContext) -> dict[str, Path]:
    return {label: ctx.out / "data" / "eval" / f"{label}.jsonl" for label in ctx.summaries["data"]["eval_sets"]}


def stage_chunk(ctx: RunContext) -> dict[str, Any]:
    """Split every trace into thoughts; boundary quality against the planted truth."""
    from longshort.thoughts.chunking import chunk_records
    from longshort.thoughts.quality import boundary_prf

    cfg, d = ctx.config, ctx.dir("chunk")
    traces = read_jsonl(ctx.out / "data" / "traces.jsonl")
    with Engines(cfg) as engines:
        engine = engines.get(cfg.models.base) if cfg.chunk.method == "llm" else None
        chunks = chunk_records(traces, cfg.chunk, engine=engine, progress=True)
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
    write_json_atomic(d / "quality.json", summary)
    return summary


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


def needs_baseline_sft(cfg: Any, stages: Any = None) -> bool:
    """Whether a stage of this run uses the fine-tuned baseline: score (as the scorer), sft (as the
    roles' start), eval (as the distilled baseline). `stages`: the names of the stages that run
    (None = all); a run that stops before them (`stop_after`) skips the baseline's training, and
    a later run that goes further trains it then."""
    def runs(name: str) -> bool:
        return stages is None or name in stages

    if stages is not None and list(stages)[-1:] == ["baseline"]:  # the run stops at the baseline: train it
        return True
    return ((runs("score") and cfg.models.scorer == "baseline") or (runs("sft") and cfg.models.pair_init == "baseline")
            or (runs("eval") and cfg.eval.baseline == "distill"))


def stage_baseline(ctx: RunContext) -> dict[str, Any]:
    """SFT of the long-CoT baseline on the whole traces: the system the pair is compared with, and
    (with `models.scorer: baseline`) the model that scores the thoughts."""
    from longshort.pipeline.training import train_one

    cfg, d = ctx.config, ctx.dir("baseline")
    if not needs_baseline_sft(cfg, ctx.stages):
        return {"model": None}
    data = d / "baseline_data.jsonl"
    write_jsonl_atomic(data, baseline_examples(read_jsonl(ctx.out / "data" / "traces.jsonl")))
    return train_one(ctx, "baseline", "long", data, d / "model")


def scorer_model(ctx: RunContext) -> str:
    """The model that scores importance: `models.scorer` (None = the base, `baseline` = the
    pipeline's own fine-tuned long-CoT baseline)."""
    cfg = ctx.config
    if cfg.models.scorer == "baseline":
        return ctx.summaries["baseline"]["model"]
    return cfg.models.scorer or cfg.models.base


def _score_file(records: list[dict[str, Any]], path: Path, engine: Any, score_cfg: Any) -> list[dict[str, Any]]:
    from longshort.io import ResumableWriter
    from longshort.thoughts.scoring import iter_score

    with ResumableWriter(path, resume=True) as writer:
        todo = [r for r in records if str(r["id"]) not in writer.done_ids]
        for rec in iter_score(todo, engine, score_cfg, progress=True):
            writer.write(rec)
        return list(writer.records)


def _by_kind(scored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from longshort.thoughts.quality import gold_scores

    by_kind: dict[str, list[float]] = {}
    for r in scored:
        if r.get("gold_thoughts"):
            for g, sc in zip(r["gold_thoughts"], gold_scores(r["thoughts"], r["gold_thoughts"]), strict=True):
                if sc is not None:
                    by_kind.setdefault(g.get("kind", "essential" if g.get("essential") else "redundant"),
                                       []).append(float(sc))
    return {k: {"n": len(v), "mean": round(sum(v) / len(v), 4)} for k, v in sorted(by_kind.items())}


def stage_score(ctx: RunContext) -> dict[str, Any]:
    """Importance of every thought (resumable per trace); on planted traces also its quality:
    AUROC essential vs redundant with the chunker's and with the gold boundaries, and the rank
    agreement with the other estimator on a subset (`quality` section)."""
    from longshort.thoughts.importance import describe_plan, plan
    from longshort.thoughts.quality import importance_auroc

    cfg, d = ctx.config, ctx.dir("score")
    records = read_jsonl(ctx.out / "chunk" / "chunks.jsonl")
    model = scorer_model(ctx)
    estimator = getattr(cfg.score, "estimator", "rollout")
    summary: dict[str, Any] = {"model": model, "estimator": estimator}
    with Engines(cfg) as engines:
        engine = engines.get(model)
        summary["plan"] = plan(records, engine, cfg.score)
        ctx.console.print(f"      plan: {describe_plan(summary['plan'], cfg.score)}")  # the cost, before any work
        ctx.log(f"plan: {summary['plan']}")
        scored = _score_file(records, d / "scored.jsonl", engine, cfg.score)
        planted = [r for r in scored if r.get("gold_thoughts")]
        q = cfg.quality
        if planted and q.gold_boundaries and cfg.chunk.method != "gold":
            from longshort.thoughts.chunking import ChunkConfig, chunk_records

            planted_traces = [r for r in read_jsonl(ctx.out / "data" / "traces.jsonl") if r.get("gold_thoughts")]
            gold = chunk_records(planted_traces[: q.gold_traces], ChunkConfig(method="gold"))
            summary["auroc_gold_boundaries"] = importance_auroc(_score_file(gold, d / "scored_gold.jsonl", engine,
                                                                            cfg.score))
        if planted and q.compare_traces:
            other = q.compare_estimator or ("forced" if estimator == "rollout" else "rollout")
            other_cfg = cfg.score.model_copy(update={"estimator": other})
            subset = records[: q.compare_traces]
            compared = _score_file(subset, d / f"scored_{other}.jsonl", engine, other_cfg)
            summary["compare"] = _compare(scored[: q.compare_traces], compared, other)
    summary.update({
        "traces": len(scored), "rollouts": sum(r.get("importance", {}).get("num_rollouts", 0) for r in scored),
        "generated_tokens": sum(r.get("importance", {}).get("generated_tokens", 0) for r in scored),
        "importance_by_category": _by_category(scored)})
    if summary["plan"].get("est_generated_tokens") is not None:
        summary["plan_vs_actual"] = {"estimated": summary["plan"]["est_generated_tokens"],
                                     "actual": summary["generated_tokens"]}
    if planted:
        summary["auroc"] = importance_auroc(scored)
        summary["importance_by_planted_kind"] = _by_kind(scored)
    write_json_atomic(d / "quality.json", summary)
    return summary


def _by_category(scored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_cat: dict[str, list[float]] = {}
    for r in scored:
        for t in r["thoughts"]:
            if t.get("score") is not None:
                by_cat.setdefault(t.get("category", "other"), []).append(float(t["score"]))
    return {c: {"n": len(v), "mean": round(sum(v) / len(v), 4),
                "positive_share": round(sum(x > 0 for x in v) / len(v), 4)} for c, v in sorted(by_cat.items())}


def _compare(main: list[dict[str, Any]], other: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """AUROC of the other estimator on the subset, and Spearman rank agreement thought by thought."""
    from longshort.thoughts.quality import importance_auroc, spearman

    by_id = {str(r["id"]): r for r in other}
    a, b = [], []
    for r in main:
        o = by_id.get(str(r["id"]))
        if o is None:
            continue
        for x, y in zip(r["thoughts"], o["thoughts"], strict=True):
            if x.get("score") is not None and y.get("score") is not None:
                a.append(float(x["score"]))
                b.append(float(y["score"]))
    return {"estimator": name, "traces": len(other), "auroc": importance_auroc(other),
            "auroc_main_same_traces": importance_auroc(main), "spearman": spearman(a, b), "thoughts": len(a)}


def stage_coldstart(ctx: RunContext) -> dict[str, Any]:
    """Assign thoughts to roles, compress the short ones, write one SFT set per role."""
    from longshort.models import load_tokenizer
    from longshort.thoughts.coldstart import synthesize

    cfg, d = ctx.config, ctx.dir("coldstart")
    scored = read_jsonl(ctx.out / "score" / "scored.jsonl")
    with Engines(cfg) as engines:
        engine = engines.get(cfg.models.base) if cfg.coldstart.compressor == "llm" else None
        tok = engine.count_tokens if engine else token_counter(load_tokenizer(cfg.models.base))
        long_ex, short_ex, stats = synthesize(scored, cfg.coldstart, engine=engine, count_tokens=tok)
    if not long_ex or not short_ex:
        raise LongshortError(f"cold start produced {len(long_ex)} long and {len(short_ex)} short examples "
                             f"from {len(scored)} traces (skipped as incorrect: {stats.get('skipped_incorrect')}); "
                             "both roles need data: use more or better traces, or relax coldstart settings")
    write_jsonl_atomic(d / "long.jsonl", long_ex)
    write_jsonl_atomic(d / "short.jsonl", short_ex)
    write_json_atomic(d / "stats.json", stats)
    keep = ("dialogues", "examples", "token_share", "compression_ratio", "turns_per_dialogue", "skipped_incorrect",
            "planted", "short_compression", "tokens")
    return {k: stats[k] for k in keep if k in stats}


def token_counter(tokenizer: Any):
    """Tokens of a text under `tokenizer`, no special tokens (cold-start stats, planted token shares)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    return count
