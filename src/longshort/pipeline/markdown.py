"""`report.md` of a pipeline run, rendered from its `metrics.json` dictionary (no numbers are
computed here: every figure comes from a stage's summary)."""

from __future__ import annotations

from typing import Any

from longshort.io import read_jsonl
from longshort.pipeline.context import RunContext
from longshort.pipeline.stages import eval_sets

SYSTEM_NAMES = {"pair": "Long⊗Short pair (SFT+RL)", "pair_sft": "Long⊗Short pair (SFT only)",
                "baseline": "long-CoT baseline", "short": "short model alone"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _ci(iv: dict[str, Any] | None, fmt=_pct) -> str:
    if not iv or iv.get("low") is None:
        return ""
    return f" [{fmt(iv['low'])}, {fmt(iv['high'])}]"


def example_dialogues(ctx: RunContext, k: int) -> list[dict[str, Any]]:
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


def _signed_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


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


def _header(ctx: RunContext, m: dict[str, Any]) -> list[str]:
    cfg = ctx.config
    env = m["environment"]
    git = env.get("git") or {}
    return [f"# Long⊗Short pipeline report: {cfg.name}", "",
            f"- command: `longshort pipeline {ctx.config_path} --out {ctx.out}`",
            f"- base model `{cfg.models.base}`, engine `{cfg.models.engine}`, seed {cfg.seed}; "
            f"device {env.get('device')}, {env.get('cpu_count')} CPUs; git {git.get('revision', '?')[:12]}"
            f"{' (dirty)' if git.get('dirty') else ''}",
            f"- training data: {m['data']['traces']} {cfg.data.source} traces"
            f"{' with planted importance' if m['data'].get('planted_truth') else ''}; stage times: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in m["stage_seconds"].items() if v is not None)
            + (f"; peak resident memory {m['peak_rss_mb']:,.0f} MB" if m.get("peak_rss_mb") else "")
            + _stage_peaks(m.get("stage_peak_rss_mb") or {}), ""]


def _stage_peaks(peaks: dict[str, Any]) -> str:
    """Each stage's own peak resident memory (`StagePeak`), for the stages that recorded one."""
    known = {k: v for k, v in peaks.items() if v}
    return ("; by stage " + ", ".join(f"{k} {v:,.0f} MB" for k, v in known.items())) if known else ""


def _headline(m: dict[str, Any]) -> list[str]:
    if not m["headline"]:
        return []
    lines = ["## Headline: the tuned pair against the long-CoT baseline", "",
             "Point estimates with 95% intervals in brackets.", ""]
    for label, h in m["headline"].items():
        lines.append(f"- **{label}** ({h.get('problems', '?')} problems): baseline Pass@1 "
                     f"**{_pct(h['accuracy_baseline'])}**{_ci(h.get('accuracy_baseline_ci'))}, pair "
                     f"**{_pct(h['accuracy_pair'])}**{_ci(h.get('accuracy_pair_ci'))}; difference "
                     f"{_num(h.get('accuracy_difference_points'))} points"
                     f"{_ci(h.get('accuracy_difference_ci'), lambda x: f'{x:+.1f}')}; generated tokens "
                     f"{_num(h['tokens_baseline'])} → {_num(h['tokens_pair'])}, **{_pct(h.get('token_reduction'))} "
                     f"fewer**{_ci(h.get('token_reduction_ci'))}; AES {_f3(h.get('aes'))}")
    shares = m.get("planted_token_shares") or {}
    for label, sh in shares.items():
        parts = ", ".join(f"{k.replace('_', ' ')} {_pct(v)}" for k, v in sh["share"].items())
        lines.append(f"- token shares of the {label} reference traces ({sh['tokens_per_trace']} tokens per trace, "
                     f"what the baseline learns to write): {parts}")
    im = m["importance"]
    au = (im.get("auroc") or {}).get("auroc")
    if au is not None:
        lines.append(f"- importance AUROC essential vs redundant (`{im.get('estimator')}`, chunker boundaries, "
                     f"scored by `{im.get('model')}`): **{_f3(au)}**{_ci(im.get('auroc_ci'), _f3)}")
    return lines + [""]


def _results(ctx: RunContext, m: dict[str, Any]) -> list[str]:
    cfg = ctx.config
    baseline_desc = ("the base model fine-tuned on the full long-CoT traces, answering alone in long CoT"
                     if cfg.eval.baseline == "distill" else "the base model answering alone in long CoT")
    lines = ["## Results", "", f"Baseline: {baseline_desc}. Tokens are mean generated tokens per sample "
             "(prompt tokens excluded). AES against the baseline (η=1, ς₊=3, ς₋=5).", ""]
    for label, systems in m["eval"].items():
        lines += [f"### {label}", "", "| system | mode | problems × k | Pass@1 | 95% CI | tokens total | long | short "
                  "| turns | cut by length | format violations | ΔA | ΔL | AES |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in systems.items():
            p1 = r["pass_at_1"]
            ci = "–" if p1.get("low") is None else f"[{_pct(p1['low'])}, {_pct(p1['high'])}]"
            lines.append(f"| {SYSTEM_NAMES.get(name, name)} | {r['mode']} | {r['problems']} × {r['samples']} | "
                         f"{_pct(r['accuracy'])} | {ci} | {_num(r['tokens']['total'])} | {_num(r['tokens']['long'])} | "
                         f"{_num(r['tokens']['short'])} | {_num(r['turns'], 2)} | {_pct(r.get('finish_by_length_rate'))} | "
                         f"{_pct(r.get('format_violation_rate'))} | {_signed_pct(r.get('delta_accuracy'))} | "
                         f"{_signed_pct(r.get('delta_length'))} | {_f3(r.get('aes'))} |")
        plot = m["plots"].get(f"accuracy_vs_tokens_{label}")
        if plot:
            lines += ["", f"![accuracy vs tokens on {label}]({plot})"]
        lines.append("")
    return lines


def _thoughts(ctx: RunContext, m: dict[str, Any]) -> list[str]:
    cfg = ctx.config
    ch, im = m["chunking"], m["importance"]
    lines = ["## Thoughts: chunking and importance", ""]
    if ch.get("boundary"):
        b, b1 = ch["boundary"], ch.get("boundary_tol1") or {}
        lines.append(f"- chunker `{ch['method']}`: {ch['thoughts_per_trace']} thoughts per trace; boundary precision "
                     f"{b['precision']:.3f}, recall {b['recall']:.3f}, **F1 {b['f1']:.3f}** against the planted "
                     f"thoughts (±1 step: F1 {b1.get('f1', float('nan')):.3f})")
    else:
        lines.append(f"- chunker `{ch['method']}`: {ch['thoughts_per_trace']} thoughts per trace (no planted truth "
                     "in this data, so no boundary F1)")
    lines.append(f"- importance estimator `{im.get('estimator')}`, scored by `{im.get('model')}`")
    au = im.get("auroc")
    if au:
        lines.append(f"- importance AUROC, essential vs redundant planted thoughts, chunker boundaries: **{_f3(au['auroc'])}**"
                     f"{_ci(im.get('auroc_ci'), _f3)} ({au['essential']} essential, {au['redundant']} redundant; "
                     "0.5 = chance)")
    ag = im.get("auroc_gold_boundaries")
    if ag:
        lines.append(f"- the same estimator on the gold boundaries: AUROC {_f3(ag.get('auroc'))} "
                     f"({ag.get('essential')} essential, {ag.get('redundant')} redundant)")
    cmp = im.get("compare")
    if cmp:
        lines.append(f"- on the first {cmp['traces']} traces, the `{cmp['estimator']}` estimator: AUROC "
                     f"{_f3((cmp.get('auroc') or {}).get('auroc'))} (main estimator on the same traces "
                     f"{_f3((cmp.get('auroc_main_same_traces') or {}).get('auroc'))}); Spearman rank agreement "
                     f"between the two {_f3(cmp.get('spearman'))} over {cmp['thoughts']} thoughts")
    if im.get("importance_by_planted_kind"):
        lines.append("- mean importance by planted kind: " + ", ".join(
            f"{k} {v['mean']:+.4f} (n={v['n']})" for k, v in im["importance_by_planted_kind"].items()))
    pva = im.get("plan_vs_actual")
    lines.append(f"- scoring cost: {im.get('rollouts')} rollouts, {im.get('generated_tokens')} generated tokens "
                 f"(R = {cfg.score.rollouts}, δ = {cfg.score.delta})"
                 + (f"; planned {pva['estimated']} generated tokens" if pva else ""))
    lines += ["", "| category | thoughts | mean score | share with score > 0 |", "|---|---|---|---|"]
    for cat, v in sorted((im.get("importance_by_category") or {}).items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {cat} | {v['n']} | {v['mean']:+.4f} | {_pct(v['positive_share'])} |")
    if m["plots"].get("importance_by_category"):
        lines += ["", f"![importance per category]({m['plots']['importance_by_category']})"]
    return lines + [""]


def _training(m: dict[str, Any]) -> list[str]:
    cs = m["coldstart"]
    lines = ["## Cold start and training", "",
             f"- cold start: {cs.get('dialogues')} dialogues → {cs.get('examples', {}).get('long')} long and "
             f"{cs.get('examples', {}).get('short')} short examples; token share long "
             f"{_pct((cs.get('token_share') or {}).get('long'))}; compression ratio {cs.get('compression_ratio')}"]
    pl = cs.get("planted")
    if pl:
        lines.append("- against the planted truth: " + ", ".join(f"{k.replace('_', ' ')} {_f3(v) if isinstance(v, float) else v}"
                                                                for k, v in pl.items()))
    if m.get("baseline") and m["baseline"].get("model"):
        v = m["baseline"]
        lines.append(f"- SFT baseline (whole traces): {v.get('examples')} examples, train loss "
                     f"{_num(v.get('train_loss'), 4)}, {_num(v.get('wall_s'))} s")
    for name, v in m["sft"].items():
        lines.append(f"- SFT {name}: {v.get('examples')} examples, train loss {_num(v.get('train_loss'), 4)}, "
                     f"{_num(v.get('wall_s'))} s" + (f", {v['dropped_too_long']} dropped as too long"
                                                      if v.get("dropped_too_long") else ""))
    rl = m["rl"]
    lines.append(f"- RL: {rl.get('iterations')} alternating iterations ({' → '.join(rl.get('schedule', []))}), "
                 "mean reward over the first → second half of the logged steps:")
    for h in rl.get("history", []):
        lines.append(f"  - iteration {h['iteration']} ({h['role']} trained): "
                     f"{_num(h.get('reward_mean_first_half', h.get('reward_first')), 3)} → "
                     f"{_num(h.get('reward_mean_second_half', h.get('reward_last')), 3)} over {h.get('steps')} "
                     f"logged steps, {_num(h.get('wall_s'))} s")
    return lines


def render_report_md(ctx: RunContext, m: dict[str, Any]) -> str:
    cfg = ctx.config
    lines = _header(ctx, m) + _headline(m) + _results(ctx, m) + _thoughts(ctx, m) + _training(m)
    examples = example_dialogues(ctx, cfg.report.example_dialogues)
    if examples:
        lines += ["", "## Example dialogue of the tuned pair", ""]
        for rec in examples:
            lines += _render_dialogue(rec, cfg.report.max_example_chars)
    lines += ["## Files", "", "`config.yaml` (resolved recipe), `manifest.json` (environment, timings), `metrics.json`, "
              "`pipeline.log` (everything the stages printed), stage outputs in `data/ chunk/ baseline/ score/ "
              "coldstart/ sft/ rl/ eval/`, plots in `report/`.", ""]
    return "\n".join(lines)
