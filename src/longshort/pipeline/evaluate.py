"""The eval stage: every system on every evaluation set through the evaluation harness, plus the
token shares of the held-out planted traces by kind (what the baseline was taught to write), so a
token reduction can be read against them."""

from __future__ import annotations

from typing import Any

from longshort.io import read_jsonl, write_json_atomic
from longshort.pipeline.context import Engines, RunContext
from longshort.pipeline.stages import eval_sets, token_counter


def final_models(ctx: RunContext) -> dict[str, str]:
    """The tuned pair: the RL stage's last long and short models."""
    rl = ctx.summaries["rl"]
    return {"long": rl["long"], "short": rl["short"]}


def baseline_model(ctx: RunContext) -> str:
    cfg = ctx.config
    return ctx.summaries["baseline"]["model"] if cfg.eval.baseline == "distill" else cfg.models.base


def stage_eval(ctx: RunContext) -> dict[str, Any]:
    """Every system on every evaluation set (resumable per dialogue)."""
    from longshort.harness import EvalConfig, run_eval

    cfg, d = ctx.config, ctx.dir("eval")
    tuned = final_models(ctx)
    sft = ctx.summaries["sft"]
    systems = {
        "baseline": ("long", baseline_model(ctx), None),
        "pair": ("collab", tuned["long"], tuned["short"]),
        "pair_sft": ("collab", sft["long"]["model"], sft["short"]["model"]),
        "short": ("short", None, tuned["short"]),
    }
    order = ["baseline"] + [s for s in cfg.eval.systems if s != "baseline"]  # AES needs the baseline first
    sets = eval_sets(ctx)
    results: dict[str, dict[str, Any]] = {label: {} for label in sets}
    for system in order:
        mode, long_model, short_model = systems[system]
        with Engines(cfg) as engines:  # each role at its own server; on vllm, its own share of the GPU
            le, se = engines.pair(long_model, short_model)
            for label, path in sets.items():
                out = d / label / system
                ctx.log(f"{system} ({mode}) on {label}")
                ecfg = EvalConfig(benchmark=str(path), mode=mode, long_model=long_model or short_model,
                                  short_model=short_model or long_model, engine=cfg.models.engine,
                                  base_url=cfg.models.base_url, long_base_url=cfg.models.long_base_url,
                                  short_base_url=cfg.models.short_base_url, samples=cfg.eval.samples, seed=cfg.seed,
                                  collab=cfg.eval.collab,
                                  baseline_dir=None if system == "baseline" else str(d / label / "baseline"))
                m = run_eval(ecfg, out, resume=True, progress=True, engines=(le, se),
                             command=f"longshort pipeline (stage eval, system {system})")
                results[label][system] = eval_summary(m, mode, long_model, short_model)
    shares = planted_token_shares(ctx)
    write_json_atomic(d / "results.json", results)
    return {"results": results, "planted_token_shares": shares}


def eval_summary(m: dict[str, Any], mode: str, long_model: str | None, short_model: str | None) -> dict[str, Any]:
    aes = m.get("aes") or {}
    return {"mode": mode, "long_model": long_model, "short_model": short_model, "problems": m["problems"],
            "samples": m["samples_per_problem"], "accuracy": m["accuracy"], "pass_at_1": m["pass_at_1"],
            "tokens": m["tokens"], "turns": m["turns"], "finish_by_length_rate": m["finish_by_length_rate"],
            "format_violation_rate": m["format_violation_rate"], "no_answer_rate": m.get("no_answer_rate"),
            "aes": aes.get("aes"), "delta_accuracy": aes.get("delta_accuracy"),
            "delta_length": aes.get("delta_length"), "wall_seconds": m.get("wall_seconds")}


def planted_token_shares(ctx: RunContext) -> dict[str, Any]:
    """Per synthetic evaluation set: the share of the planted reference traces' tokens (base
    model's tokenizer) in essential, redundant and neutral thoughts, and in the post-thinking
    summary with the tags; mean tokens per trace."""
    from longshort.models import load_tokenizer
    from longshort.thoughts.steps import split_steps

    out: dict[str, Any] = {}
    paths = {label: ctx.out / "data" / "eval" / f"{label}.traces.jsonl" for label in eval_sets(ctx)}
    paths = {k: p for k, p in paths.items() if p.exists()}
    if not paths:
        return out
    count = token_counter(load_tokenizer(ctx.config.models.base))

    for label, path in paths.items():
        totals = {"essential": 0, "redundant": 0, "neutral": 0, "summary_and_tags": 0}
        traces = read_jsonl(path)
        for r in traces:
            steps = split_steps(r["response"]).steps
            thought_tokens = 0
            for g in r["gold_thoughts"]:
                n = count("\n\n".join(steps[g["start"] - 1: g["end"]]))
                totals[g.get("kind", "neutral")] = totals.get(g.get("kind", "neutral"), 0) + n
                thought_tokens += n
            totals["summary_and_tags"] += max(0, count(r["response"]) - thought_tokens)
        total = sum(totals.values())
        out[label] = {"traces": len(traces), "tokens_per_trace": round(total / max(1, len(traces)), 1),
                      "share": {k: round(v / total, 4) if total else 0.0 for k, v in totals.items()}}
    return out
