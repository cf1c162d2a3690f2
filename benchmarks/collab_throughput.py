"""Benchmark: batched collaborative solving vs one dialogue at a time (issue 2, item 5).

The same problems (first 32 of GSM8K test), the same engine object(s), the same CollabConfig
and seeds are solved twice:

- batched:    `solve_problems(all problems)`: every step sends all dialogues waiting on one
              role to that role's engine in one `generate` call;
- sequential: `solve_problems([problem])` for each problem in turn.

It prints generated tokens, wall time and generated tokens/s for both, the ratio (target ≥ 4×),
and how many dialogues came out identical (greedy decoding by default, so they should match up
to batch numerics). Model loading is not timed; a short warm-up runs first.

    .venv/bin/python benchmarks/collab_throughput.py                 # embedded SmolLM2 pair
    .venv/bin/python benchmarks/collab_throughput.py --model tiny-random --problems 8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longshort.dialogue.collab import CollabConfig, solve_problems  # noqa: E402
from longshort.engines import make_engine  # noqa: E402
from longshort.io import read_jsonl  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "benchmarks" / "gsm8k_test.jsonl"


def _run(problems, engines, config) -> tuple[list[dict], float]:
    long_engine, short_engine = engines
    t0 = time.perf_counter()
    recs = solve_problems(problems, long_engine=long_engine, short_engine=short_engine, config=config)
    return recs, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model spec for both roles (default: embedded SmolLM2)")
    ap.add_argument("--short-model", default=None, help="a different short model (default: --model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL of problems (default: GSM8K test)")
    ap.add_argument("--problems", type=int, default=32, help="how many problems (default 32)")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens-long", type=int, default=64)
    ap.add_argument("--max-new-tokens-short", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), so both runs "
                                                                 "should produce the same dialogues")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    problems = read_jsonl(args.data, required=["problem"])[: args.problems]
    config = CollabConfig(max_turns=args.max_turns, max_new_tokens_long=args.max_new_tokens_long,
                          max_new_tokens_short=args.max_new_tokens_short, temperature=args.temperature,
                          seed=args.seed, max_active=max(len(problems), 1))
    t0 = time.perf_counter()
    long_engine = make_engine(args.model)
    short_engine = long_engine if args.short_model in (None, args.model) else make_engine(args.short_model)
    engines = (long_engine, short_engine)
    load_s = time.perf_counter() - t0
    # Warm-up (first-call allocations, lazy imports), not timed.
    _run(problems[:1], engines, config.model_copy(update={"max_new_tokens_long": 4, "max_new_tokens_short": 4}))

    batched, t_batched = _run(problems, engines, config)
    print(f"batched: {len(batched)} dialogues in {t_batched:.1f}s", file=sys.stderr, flush=True)
    sequential, t_seq = [], 0.0
    for i, p in enumerate(problems, start=1):
        recs, dt = _run([p], engines, config)
        sequential += recs
        t_seq += dt
        print(f"sequential: {i}/{len(problems)} dialogues, {t_seq:.1f}s", file=sys.stderr, flush=True)

    def gen_tokens(recs):
        return sum(r["tokens"]["total"] for r in recs)

    tok_b, tok_s = gen_tokens(batched), gen_tokens(sequential)
    tps_b, tps_s = tok_b / t_batched, tok_s / t_seq
    same = sum(a["turns"] == b["turns"] for a, b in zip(batched, sequential, strict=True))
    turns_b = sum(r["num_turns"] for r in batched)

    import torch

    print(f"collab_throughput: {len(problems)} problems from {Path(args.data).name}, long={args.model}, "
          f"short={args.short_model or args.model}")
    print(f"settings: max_turns={args.max_turns}, max_new_tokens long/short={args.max_new_tokens_long}/"
          f"{args.max_new_tokens_short}, temperature={args.temperature}, seed={args.seed}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (shared CPU: timings are noisy); "
          f"model load {load_s:.1f}s (not timed)")
    print()
    print(f"{'':12} {'gen tokens':>11} {'wall s':>9} {'tokens/s':>10}")
    print(f"{'sequential':12} {tok_s:>11} {t_seq:>9.1f} {tps_s:>10.2f}")
    print(f"{'batched':12} {tok_b:>11} {t_batched:>9.1f} {tps_b:>10.2f}")
    print()
    print(f"ratio batched/sequential: {tps_b / tps_s:.2f}x tokens/s (target >= 4x); "
          f"wall-time speed-up {t_seq / t_batched:.2f}x")
    print(f"identical dialogues: {same}/{len(problems)}; turns per dialogue (batched): "
          f"{turns_b / max(len(batched), 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
