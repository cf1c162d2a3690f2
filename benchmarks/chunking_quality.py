"""Chunking quality: the heuristic chunker against planted boundaries, and its output on real traces.

Part 1: boundary precision / recall / F1 (exact and ±1 step) of the `heuristic` chunker on 200
synthetic traces (`longshort synth`, seed 0) against their true thought boundaries, side by
side with two model-free baselines (every step a thought; fixed 2-step blocks) — ratios are
heuristic ÷ baseline F1.
Part 2: on every real trace file in ../shared/longcot/: steps and thoughts per trace, steps per
thought, and the category counts of the thoughts.

Run: .venv/bin/python benchmarks/chunking_quality.py [--n 200] [--seed 0] [--longcot DIR]
"""

from __future__ import annotations

import argparse
import statistics as st
import time
from collections import Counter
from pathlib import Path

from longshort.thoughts.chunking import CATEGORIES, chunk_records, make_thought
from longshort.thoughts.ingest import load_traces
from longshort.thoughts.quality import boundary_prf
from longshort.thoughts.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
TRACE_FILES = ["longshort_example", "limo_r1_distill_qwen32b", "aime24_gemini2_flash_thinking",
               "thought_anchors_math", "sat_deepseek_r1", "deltabench_examples", "skyt1_32b_aime24"]


def _fixed(steps: list[str], size: int) -> list[dict]:
    return [make_thought(steps, s, min(len(steps), s + size - 1), "block")
            for s in range(1, len(steps) + 1, size)]


def synthetic_part(n: int, seed: int) -> None:
    recs = generate(n, seed=seed)
    t0 = time.perf_counter()
    chunks = chunk_records(recs)
    dt = time.perf_counter() - t0
    gold = [r["gold_thoughts"] for r in recs]
    methods = {
        "heuristic": [c["thoughts"] for c in chunks],
        "every step": [_fixed(c["steps"], 1) for c in chunks],
        "fixed 2-step": [_fixed(c["steps"], 2) for c in chunks],
    }
    print(f"== boundaries vs planted truth: {n} synthetic traces (seed {seed}), "
          f"{sum(len(g) for g in gold)} true thoughts, {sum(len(c['steps']) for c in chunks)} steps")
    print(f"{'method':<14}{'P':>8}{'R':>8}{'F1':>8}{'F1±1':>8}{'thoughts/trace':>16}")
    res = {}
    for name, pred in methods.items():
        exact = boundary_prf(pred, gold)
        tol = boundary_prf(pred, gold, tolerance=1)
        res[name] = exact["f1"]
        per = st.mean(len(p) for p in pred)
        print(f"{name:<14}{exact['precision']:>8.3f}{exact['recall']:>8.3f}{exact['f1']:>8.3f}{tol['f1']:>8.3f}{per:>16.2f}")
    print(f"true thoughts/trace: {st.mean(len(g) for g in gold):.2f}; heuristic time {dt * 1000 / n:.2f} ms/trace")
    for name in ("every step", "fixed 2-step"):
        if res[name]:
            print(f"F1 ratio heuristic / {name}: {res['heuristic'] / res[name]:.2f}x")
    # category agreement on thoughts whose boundaries match exactly
    agree = total = 0
    for c, g in zip(chunks, gold, strict=True):
        gmap = {(t["start"], t["end"]): t["category"] for t in g}
        for t in c["thoughts"]:
            if (t["start"], t["end"]) in gmap:
                total += 1
                agree += t["category"] == gmap[(t["start"], t["end"])]
    if total:
        print(f"category agreement on exactly matched thoughts: {agree}/{total} = {agree / total:.3f}")


def real_part(longcot: Path) -> None:
    print(f"\n== heuristic chunker on real traces ({longcot})")
    head = f"{'file':<32}{'traces':>7}{'steps':>8}{'thoughts':>9}{'steps/th':>9}  " + " ".join(
        f"{c[:5]:>6}" for c in CATEGORIES) + "  flags"
    print(head)
    for name in TRACE_FILES:
        p = longcot / f"{name}.jsonl"
        if not p.exists():
            print(f"{name:<32} missing")
            continue
        chunks = chunk_records(load_traces(p))
        steps = [len(c["steps"]) for c in chunks]
        ths = [len(c["thoughts"]) for c in chunks]
        cats = Counter(t["category"] for c in chunks for t in c["thoughts"])
        total = sum(cats.values())
        flags = Counter(f for c in chunks for f in c["flags"])
        print(f"{name:<32}{len(chunks):>7}{st.median(steps):>8.0f}{st.median(ths):>9.0f}"
              f"{sum(steps) / sum(ths):>9.2f}  " + " ".join(f"{cats[c] / total:>6.1%}" for c in CATEGORIES)
              + "  " + (", ".join(f"{k}={v}" for k, v in flags.items()) or "-"))
    print("(steps, thoughts: medians per trace; category columns: share of thoughts)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--longcot", type=Path, default=ROOT.parent / "shared" / "longcot")
    args = ap.parse_args()
    synthetic_part(args.n, args.seed)
    real_part(args.longcot)


if __name__ == "__main__":
    main()
