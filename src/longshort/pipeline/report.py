"""The report stage: `metrics.json`, `report.md` and the plots.

The headline puts every point estimate beside its 95% interval: Pass@1 of the baseline and the
pair (from the harness), the pair's accuracy difference (paired by problem, t-interval), the
token reduction (percentile bootstrap over problems) and the importance AUROC (bootstrap over
traces).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from longshort.io import read_jsonl, save_figure_atomic, write_json_atomic, write_text_atomic
from longshort.pipeline.context import RunContext
from longshort.pipeline.markdown import SYSTEM_NAMES, _ci, _num, _pct, render_report_md
from longshort.rundir import read_json

BOOTSTRAP = 2000


# ----------------------------------------------------------------------------- statistics


def _by_problem(path: Path) -> dict[str, dict[str, float]]:
    """Per problem: mean correctness and mean generated tokens over its samples."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for r in read_jsonl(path):
        pid = str(r.get("problem_id", r.get("id")))
        acc.setdefault(pid, []).append((float(bool(r.get("correct"))), float((r.get("tokens") or {}).get("total", 0))))
    return {k: {"correct": sum(c for c, _ in v) / len(v), "tokens": sum(t for _, t in v) / len(v)}
            for k, v in acc.items()}


def paired_comparison(base_path: Path, pair_path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Accuracy difference (pair − baseline, in points, paired t-interval over problems) and
    token reduction (1 − pair tokens / baseline tokens, percentile bootstrap over problems)."""
    base, pair = _by_problem(base_path), _by_problem(pair_path)
    ids = sorted(set(base) & set(pair))
    if not ids:
        return {}
    diffs = [pair[i]["correct"] - base[i]["correct"] for i in ids]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1)) if n > 1 else 0.0
    half = _t975(n - 1) * sd / math.sqrt(n) if n > 1 else None
    bt = sum(base[i]["tokens"] for i in ids)
    reduction = 1 - sum(pair[i]["tokens"] for i in ids) / bt if bt else None
    rng = random.Random(seed)
    boots = []
    for _ in range(BOOTSTRAP):
        sample = [ids[rng.randrange(n)] for _ in range(n)]
        b = sum(base[i]["tokens"] for i in sample)
        if b:
            boots.append(1 - sum(pair[i]["tokens"] for i in sample) / b)
    boots.sort()
    red_iv = {"low": boots[int(0.025 * len(boots))], "high": boots[int(0.975 * len(boots)) - 1]} if boots else None
    return {"problems": n,
            "accuracy_difference_points": round(100 * mean, 2),
            "accuracy_difference_ci": None if half is None else
            {"low": round(100 * (mean - half), 2), "high": round(100 * (mean + half), 2)},
            "token_reduction": None if reduction is None else round(reduction, 4),
            "token_reduction_ci": None if red_iv is None else {k: round(v, 4) for k, v in red_iv.items()}}


def _t975(df: int) -> float:
    """The 97.5% quantile of Student's t (table for small df, normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    for k in sorted(table):
        if df <= k:
            return table[k]
    return 1.960


def auroc_interval(scored: list[dict[str, Any]], *, seed: int = 0) -> dict[str, float] | None:
    """Percentile-bootstrap 95% interval of the importance AUROC, resampling traces."""
    from longshort.thoughts.quality import importance_auroc

    planted = [r for r in scored if r.get("gold_thoughts")]
    if len(planted) < 2:
        return None
    rng = random.Random(seed)
    vals = []
    for _ in range(BOOTSTRAP // 4):
        a = importance_auroc([planted[rng.randrange(len(planted))] for _ in planted]).get("auroc")
        if a is not None:
            vals.append(a)
    if not vals:
        return None
    vals.sort()
    return {"low": vals[int(0.025 * len(vals))], "high": vals[int(0.975 * len(vals)) - 1]}


# ----------------------------------------------------------------------------- the stage


def headline(ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per evaluation set: the tuned pair against the long-CoT baseline."""
    out = {}
    for label, systems in results.items():
        pair, base = systems.get("pair"), systems.get("baseline")
        if not pair or not base:
            continue
        d = ctx.out / "eval" / label
        cmp = paired_comparison(d / "baseline" / "predictions.jsonl", d / "pair" / "predictions.jsonl",
                                seed=ctx.config.seed)
        out[label] = {"accuracy_baseline": base["accuracy"], "accuracy_baseline_ci": _iv(base),
                      "accuracy_pair": pair["accuracy"], "accuracy_pair_ci": _iv(pair),
                      "tokens_baseline": base["tokens"]["total"], "tokens_pair": pair["tokens"]["total"],
                      "aes": pair.get("aes"), **cmp}
    return out


def _iv(r: dict[str, Any]) -> dict[str, float | None]:
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
        ax.set_title("Importance per thought category")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)
    return path


def stage_report(ctx: RunContext) -> dict[str, Any]:
    """metrics.json, report.md and the plots (accuracy vs tokens, importance per category)."""
    from longshort.evaluation.report import plot_accuracy_vs_tokens

    cfg, out = ctx.config, ctx.out
    rdir = ctx.dir("report")
    s = ctx.summaries
    results = s["eval"]["results"]
    head = headline(ctx, results)
    manifest = read_json(out / "manifest.json")
    score = dict(s["score"])
    scored_path = out / "score" / "scored.jsonl"
    if score.get("auroc") and scored_path.exists():
        score["auroc_ci"] = auroc_interval(read_jsonl(scored_path), seed=cfg.seed)
    metrics = {"name": cfg.name, "seed": cfg.seed, "headline": head, "eval": results,
               "planted_token_shares": s["eval"].get("planted_token_shares"),
               "chunking": {k: s["chunk"].get(k) for k in ("method", "thoughts_per_trace", "boundary", "boundary_tol1")},
               "importance": score, "coldstart": s["coldstart"], "baseline": s.get("baseline"), "sft": s["sft"],
               "rl": s["rl"], "data": s["data"],
               "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
               "peak_rss_mb": manifest.get("peak_rss_mb"),
               "stage_peak_rss_mb": {k: v.get("peak_rss_mb") for k, v in manifest.get("stages", {}).items()},
               "environment": {k: manifest.get(k) for k in ("python", "platform", "cpu_count", "device", "git",
                                                            "packages")}}
    plots: dict[str, str] = {}
    for label, systems in results.items():
        rows = [{"run": SYSTEM_NAMES.get(name, name), "benchmark": label, "mode": r["mode"],
                 "accuracy": r["accuracy"], "tokens": r["tokens"]["total"], **_iv(r)}
                for name, r in systems.items()]
        p = plot_accuracy_vs_tokens(rows, rdir / f"accuracy_vs_tokens_{label}.png",
                                    title=f"Accuracy vs generated tokens · {label}")
        plots[f"accuracy_vs_tokens_{label}"] = str(p.relative_to(out))
    imp = _plot_importance(score.get("importance_by_category") or {}, rdir / "importance_by_category.png")
    if imp is not None:
        plots["importance_by_category"] = str(imp.relative_to(out))
    metrics["plots"] = plots
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report_md(ctx, metrics))
    return {"headline": head, "plots": plots}


def write_summary(ctx: RunContext) -> list[str]:
    """The lines printed at the end of a run: per set, baseline vs pair with intervals."""
    m = read_json(ctx.out / "metrics.json")
    lines = []
    for label, h in (m.get("headline") or {}).items():
        lines.append(f"{label}: baseline {_pct(h['accuracy_baseline'])}{_ci(h.get('accuracy_baseline_ci'))} at "
                     f"{_num(h['tokens_baseline'])} tokens; pair {_pct(h['accuracy_pair'])}"
                     f"{_ci(h.get('accuracy_pair_ci'))} at {_num(h['tokens_pair'])} tokens "
                     f"({_pct(h.get('token_reduction'))} fewer{_ci(h.get('token_reduction_ci'))})")
    au = (m.get("importance") or {}).get("auroc")
    if au and au.get("auroc") is not None:
        lines.append(f"importance AUROC essential vs redundant: {au['auroc']:.3f}"
                     f"{_ci(m['importance'].get('auroc_ci'), lambda x: f'{x:.3f}')}")
    return lines
