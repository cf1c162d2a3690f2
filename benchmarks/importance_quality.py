"""Importance quality: do the estimators find the essential thoughts of planted traces?

For each seed, `longshort synth --n N` traces are chunked twice, with the planted (gold)
boundaries and with a model-free chunker's boundaries, and scored by both estimators of the
accuracy term (the joint formula gain × δ^(y/Y) is the same):

- `forced`: the scoring model's probability of the gold answer after each prefix (one encoding
  of the trace, answer probes branched off its KV cache), on all N traces;
- `rollout`: R sampled continuations per prefix, graded on the continuation only; costly on a
  CPU, so only the first `--rollout-traces` traces, with few tokens per continuation.

Printed per seed and pooled: AUROC essential vs redundant (`thoughts.quality.importance_auroc`:
each scored thought takes the planted kind covering most of its steps) for each estimator and
boundary kind, the Spearman rank agreement between the two estimators on the traces both
scored, the share of unfinished rollouts, and wall times. `--json` writes everything.

Run: .venv/bin/python benchmarks/importance_quality.py [--n 24] [--seeds 0 1 2] [--model smollm2-135m]
     [--rollout-traces 4] [--rollouts 3] [--max-new-tokens 48] [--chunker heuristic] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from longshort.engines.hf import HFEngine
from longshort.thoughts.chunking import ChunkConfig, chunk_records
from longshort.thoughts.importance import ImportanceConfig
from longshort.thoughts.quality import estimator_agreement, importance_auroc
from longshort.thoughts.scoring import score_traces
from longshort.thoughts.synthetic import generate


def _run(recs: list[dict], engine: HFEngine, cfg: ImportanceConfig) -> tuple[list[dict], float]:
    t = time.perf_counter()
    out = score_traces(recs, engine, cfg)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--chunker", default="heuristic", help="model-free chunker for the second boundary kind")
    ap.add_argument("--rollout-traces", type=int, default=4, help="traces per seed scored by rollout (0 = none)")
    ap.add_argument("--rollouts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", default=None, help="write all figures to this file")
    args = ap.parse_args()

    engine = HFEngine(args.model)
    forced = ImportanceConfig(estimator="forced")
    rollout = ImportanceConfig(estimator="rollout", rollouts=args.rollouts, max_new_tokens=args.max_new_tokens)
    print(f"model {args.model}; n={args.n} traces per seed; rollout: first {args.rollout_traces} traces, "
          f"R={args.rollouts}, max_new_tokens={args.max_new_tokens}; load average {os.getloadavg()[0]:.1f}")
    rows, pooled = [], {}
    for seed in args.seeds:
        traces = generate(args.n, seed=seed)
        row: dict = {"seed": seed}
        for bounds, method in (("gold", "gold"), (args.chunker, args.chunker)):
            chunks = chunk_records(traces, ChunkConfig(method=method))
            f_out, f_wall = _run(chunks, engine, forced)
            r_out, r_wall = _run(chunks[: args.rollout_traces], engine, rollout) if args.rollout_traces else ([], 0.0)
            pooled.setdefault((bounds, "forced"), []).extend(f_out)
            pooled.setdefault((bounds, "rollout"), []).extend(r_out)
            pooled.setdefault((bounds, "forced_subset"), []).extend(f_out[: args.rollout_traces])
            n_roll = sum(r["importance"]["num_rollouts"] for r in r_out)
            row[bounds] = {
                "forced": importance_auroc(f_out), "forced_wall_s": round(f_wall, 1),
                "rollout": importance_auroc(r_out) if r_out else None, "rollout_wall_s": round(r_wall, 1),
                "forced_same_traces": importance_auroc(f_out[: args.rollout_traces]) if r_out else None,
                "spearman": estimator_agreement(f_out, r_out) if r_out else None,
                "unfinished_share": round(sum(r["importance"]["unfinished"] for r in r_out) / n_roll, 3)
                if n_roll else None}
            b = row[bounds]
            print(f"seed {seed} {bounds:>9} boundaries: forced AUROC {b['forced']['auroc']} "
                  f"({b['forced']['essential']} ess / {b['forced']['redundant']} red, {f_wall:.0f} s)"
                  + (f"; rollout AUROC {b['rollout']['auroc']} vs forced {b['forced_same_traces']['auroc']} "
                     f"on the same {len(r_out)} traces, Spearman {b['spearman']['spearman']}, unfinished "
                     f"{b['unfinished_share']} ({r_wall:.0f} s)" if r_out else ""), flush=True)
        rows.append(row)
    summary = {}
    for bounds in ("gold", args.chunker):
        f, r = pooled[(bounds, "forced")], pooled[(bounds, "rollout")]
        summary[bounds] = {"forced": importance_auroc(f), "rollout": importance_auroc(r) if r else None,
                           "forced_same_traces": importance_auroc(pooled[(bounds, "forced_subset")]) if r else None,
                           "spearman": estimator_agreement(f, r) if r else None}
        s = summary[bounds]
        print(f"pooled {bounds:>9} boundaries: forced AUROC {s['forced']['auroc']}"
              + (f"; rollout AUROC {s['rollout']['auroc']} (forced on the same traces "
                 f"{s['forced_same_traces']['auroc']}), Spearman {s['spearman']['spearman']} over "
                 f"{s['spearman']['thoughts']} thoughts" if r else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "per_seed": rows, "pooled": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
