"""Monte Carlo importance: prefix KV reuse vs re-encoding every rollout's prefix.

Scores the same traces twice with the same model, rollouts and seeds: once with
`HFEngine(reuse_prefix=True)` (shared prefixes encoded once, `engines.prefill`: the longest
prefix of a trace goes through the model once, every shorter prefix and all R samples of each
decode off its KV cache) and once with `reuse_prefix=False` (each of the R samples of each
prefix re-encodes its whole prefix). Traces: real long-CoT traces (../shared/longcot/, heuristic
thoughts) cut to about `--prefix-tokens` tokens of thinking, so that the longest prefixes are
~1k tokens. Only the prefixes whose length is at least half of that are scored (the rest of
the thoughts are folded into the first one), so the prefixes are ~0.5k–1k tokens as in the
target setting. Prints rollouts/s for both, the ratio, and whether the accuracies agree.

Run: .venv/bin/python benchmarks/importance_speed.py [--model smollm2-135m] [--traces 1]
     [--rollouts 5] [--prefix-tokens 1000] [--max-new-tokens 8]
"""

from __future__ import annotations

import argparse
import statistics as st
import time
from pathlib import Path

from _machine import header, load

from longshort.dialogue.protocol import render_input
from longshort.engines.base import GenerationRequest
from longshort.engines.hf import HFEngine
from longshort.thoughts.chunking import ChunkConfig, chunk_records, make_thought
from longshort.thoughts.importance import ImportanceConfig, plan
from longshort.thoughts.ingest import load_traces
from longshort.thoughts.scoring import score_record

ROOT = Path(__file__).resolve().parents[1]


def build_traces(engine: HFEngine, path: Path, k: int, prefix_tokens: int, n_prefixes: int) -> list[dict]:
    """Real traces cut to ~prefix_tokens thinking tokens; early thoughts merged into the first so
    that the scored prefixes (i = 0 is the question alone) are the last `n_prefixes` ones."""
    out = []
    for rec in chunk_records(load_traces(path), ChunkConfig(method="heuristic"))[: k * 3]:
        steps, used, cut = rec["steps"], 0, 0
        for i, s in enumerate(steps):
            used += engine.count_tokens(s) + 1
            if used > prefix_tokens:
                break
            cut = i + 1
        ths = [t for t in rec["thoughts"] if t["end"] <= cut]
        if len(ths) < n_prefixes + 1:
            continue
        head_end = ths[-n_prefixes - 1]["end"]
        thoughts = [make_thought(steps, 1, head_end, "merged head")] + [
            make_thought(steps, t["start"], t["end"], t["type"], t["category"]) for t in ths[-n_prefixes:]]
        out.append({**rec, "steps": steps[:cut], "thoughts": thoughts,
                    "response": "<think>\n" + "\n\n".join(steps[:cut]) + "\n</think>"})
        if len(out) == k:
            break
    return out


def run(engine: HFEngine, traces: list[dict], cfg: ImportanceConfig) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    outs = [score_record(r, engine, cfg) for r in traces]
    dt = time.perf_counter() - t0
    rollouts = sum(o["importance"]["num_rollouts"] for o in outs)
    return dt, rollouts, [[t["acc"] for t in o["thoughts"]] + [o["importance"]["acc0"]] for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--traces", type=int, default=1)
    ap.add_argument("--rollouts", type=int, default=5)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--prefixes", type=int, default=3, help="thoughts scored per trace (after the head)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--file", type=Path, default=ROOT.parent / "shared" / "longcot" / "limo_r1_distill_qwen32b.jsonl")
    args = ap.parse_args()
    print(header())

    reuse = HFEngine(args.model, reuse_prefix=True)
    # the same weights and tokenizer, only the prefix handling differs
    fresh = HFEngine.from_model(reuse.model, reuse.tokenizer, reuse_prefix=False)
    traces = build_traces(reuse, args.file, args.traces, args.prefix_tokens, args.prefixes)
    cfg = ImportanceConfig(rollouts=args.rollouts, max_new_tokens=args.max_new_tokens, seed=0)
    p = plan(traces, reuse, cfg)
    lens = []
    for r in traces:
        messages, _ = render_input("long", r["problem"], solo=True)
        base = reuse.count_tokens(reuse.render(GenerationRequest(messages=messages)))
        y = [0]
        for t in r["thoughts"]:
            y.append(y[-1] + reuse.count_tokens(t["text"]))
        lens += [base + v for v in y]
    print(f"model {args.model}; {len(traces)} trace(s) from {args.file.name}; {p['requests']} requests x "
          f"{args.rollouts} rollouts = {p['rollouts']}; max_new_tokens {args.max_new_tokens}; "
          f"prompt+prefix tokens per request: median {st.median(lens):.0f} (max {max(lens)})")
    run(reuse, traces[:1], cfg.model_copy(update={"rollouts": 1}))  # warm-up (allocator, kernels)
    t_fresh, n_fresh, acc_fresh = run(fresh, traces, cfg)
    t_reuse, n_reuse, acc_reuse = run(reuse, traces, cfg)
    assert n_fresh == n_reuse
    print(f"{'':<24}{'seconds':>10}{'rollouts/s':>12}")
    print(f"{'re-encode per rollout':<24}{t_fresh:>10.2f}{n_fresh / t_fresh:>12.2f}")
    print(f"{'prefix KV reuse':<24}{t_reuse:>10.2f}{n_reuse / t_reuse:>12.2f}")
    print(f"speed-up (reuse / re-encode): {t_fresh / t_reuse:.2f}x")
    same = sum(a == b for x, y in zip(acc_fresh, acc_reuse, strict=True) for a, b in zip(x, y, strict=True))
    total = sum(len(x) for x in acc_fresh)
    print(f"accuracies equal in both modes (same seeds): {same}/{total}")
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
