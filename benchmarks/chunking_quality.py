"""Chunking quality: every chunker against planted truth and against real reference segmentations.

Part 1: boundary precision / recall / F1 (exact and ±1 step) of each model-free chunker
(`segment`, the default; `heuristic`; two baselines: every step a thought, fixed 2-step blocks)
on synthetic traces (`longshort synth`, seed 0) against their planted thought boundaries.
Part 2: the same chunkers against the reference segmentations in ../shared/longcot/ (runs of
one Schoenfeld episode label, runs of one Thought-Anchors function tag, mapped onto the
blank-line steps; ±1 step), with thoughts per trace of chunker and reference.
Part 3: thoughts per trace (mean, median, min, max) of every chunker on every trace file,
and the share of thought categories of the default chunker.

Run: .venv/bin/python benchmarks/chunking_quality.py [--n 200] [--seed 0] [--longcot DIR]
"""

from __future__ import annotations

import argparse
import statistics as st
import time
from collections import Counter
from pathlib import Path

from longshort.thoughts.chunking import CATEGORIES, ChunkConfig, chunk_records, make_thought
from longshort.thoughts.ingest import load_traces
from longshort.thoughts.quality import boundary_prf
from longshort.thoughts.references import available_references
from longshort.thoughts.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
TRACE_FILES = ["longshort_example", "limo_r1_distill_qwen32b", "aime24_gemini2_flash_thinking",
               "thought_anchors_math", "sat_deepseek_r1", "deltabench_examples", "skyt1_32b_aime24"]
MODEL_FREE = ("segment", "heuristic")


def _fixed(steps: list[str], size: int) -> list[dict]:
    return [make_thought(steps, s, min(len(steps), s + size - 1), "block")
            for s in range(1, len(steps) + 1, size)]


def _predict(records: list[dict]) -> dict[str, list[list[dict]]]:
    """Thoughts of every chunker (and the two baselines) for the records."""
    out: dict[str, list[list[dict]]] = {}
    steps = None
    for m in MODEL_FREE:
        chunks = chunk_records(records, ChunkConfig(method=m))
        out[m] = [c["thoughts"] for c in chunks]
        steps = [c["steps"] for c in chunks]
    out["every step"] = [_fixed(s, 1) for s in steps or []]
    out["fixed 2-step"] = [_fixed(s, 2) for s in steps or []]
    return out


def _row(name: str, pred: list[list[dict]], gold: list[list[dict]]) -> str:
    exact = boundary_prf(pred, gold)
    tol = boundary_prf(pred, gold, tolerance=1)
    per = st.mean(len(p) for p in pred)
    return (f"{name:<14}{exact['precision']:>7.3f}{exact['recall']:>7.3f}{exact['f1']:>7.3f}"
            f"{tol['precision']:>8.3f}{tol['recall']:>7.3f}{tol['f1']:>7.3f}{per:>10.1f}")


HEAD = f"{'chunker':<14}{'P':>7}{'R':>7}{'F1':>7}{'P±1':>8}{'R±1':>7}{'F1±1':>7}{'th/trace':>10}"


def synthetic_part(n: int, seed: int) -> None:
    recs = generate(n, seed=seed)
    gold = [r["gold_thoughts"] for r in recs]
    t0 = time.perf_counter()
    preds = _predict(recs)
    dt = time.perf_counter() - t0
    print(f"== vs planted truth: {n} synthetic traces (seed {seed}), "
          f"{st.mean(len(g) for g in gold):.2f} true thoughts/trace")
    print(HEAD)
    for name, pred in preds.items():
        print(_row(name, pred, gold))
    f1 = {k: boundary_prf(v, gold)["f1"] for k, v in preds.items()}
    print(f"F1 ratio segment / heuristic: {f1['segment'] / max(f1['heuristic'], 1e-9):.2f}x; "
          f"all chunkers {dt * 1000 / n:.1f} ms/trace")


def reference_part(longcot: Path) -> None:
    refs = available_references(longcot)
    if not refs:
        print(f"\n== no reference annotations in {longcot}")
        return
    for name, pairs in refs.items():
        gold = [ref for _, ref in pairs]
        print(f"\n== vs {name}: {len(pairs)} real traces, {st.mean(len(g) for g in gold):.1f} reference "
              "segments/trace (runs of one label mapped to steps)")
        print(HEAD)
        for cname, pred in _predict([r for r, _ in pairs]).items():
            print(_row(cname, pred, gold))


def distribution_part(longcot: Path) -> None:
    print(f"\n== thoughts per trace on real traces ({longcot})")
    print(f"{'file':<32}{'traces':>7}{'steps':>7}  " + "  ".join(f"{m:>22}" for m in MODEL_FREE)
          + "   segment categories")
    print(f"{'':<32}{'':>7}{'med':>7}  " + "  ".join(f"{'mean / med / min-max':>22}" for _ in MODEL_FREE))
    for name in TRACE_FILES:
        p = longcot / f"{name}.jsonl"
        if not p.exists():
            print(f"{name:<32} missing")
            continue
        recs = load_traces(p)
        cells = []
        cats: Counter[str] = Counter()
        steps = []
        for m in MODEL_FREE:
            chunks = chunk_records(recs, ChunkConfig(method=m))
            ths = [len(c["thoughts"]) for c in chunks]
            steps = [len(c["steps"]) for c in chunks]
            cells.append(f"{st.mean(ths):6.1f} / {st.median(ths):4.0f} / {min(ths)}-{max(ths)}")
            if m == "segment":
                cats = Counter(t["category"] for c in chunks for t in c["thoughts"])
        total = sum(cats.values()) or 1
        print(f"{name:<32}{len(recs):>7}{st.median(steps):>7.0f}  " + "  ".join(f"{c:>22}" for c in cells)
              + "   " + " ".join(f"{c[:4]} {cats[c] / total:.0%}" for c in CATEGORIES if cats[c]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--longcot", type=Path, default=ROOT.parent / "shared" / "longcot")
    args = ap.parse_args()
    synthetic_part(args.n, args.seed)
    reference_part(args.longcot)
    distribution_part(args.longcot)


if __name__ == "__main__":
    main()
