"""Benchmark: batched collaborative solving vs one dialogue at a time (issue 2, item 5).

The same problems (first 32 of GSM8K test), the same engine object(s), the same CollabConfig
and seeds are solved twice:

- batched:    `solve_problems(all problems)`: one engine session (`Engine.open_session`) for
              all dialogues; with the transformers engine that is continuous batching (a
              dialogue's next turn joins the running decode batch as soon as its turn ends);
- sequential: `solve_problems([problem])` for each problem in turn.

It prints generated tokens, wall time and generated tokens/s for both, the ratio (target ≥ 6×, issue 14),
and how many dialogues came out identical (greedy decoding by default, so they should match up
to batch numerics). Model loading is not timed; a short warm-up runs first.

    .venv/bin/python benchmarks/collab_throughput.py                 # embedded SmolLM2 pair
    .venv/bin/python benchmarks/collab_throughput.py --model tiny-random --problems 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import header  # noqa: E402

from longshort.dialogue.collab import CollabConfig, solve_problems  # noqa: E402
from longshort.engines import make_engine  # noqa: E402
from longshort.io import read_jsonl  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "benchmarks" / "gsm8k_test.jsonl"


def _run(problems, engines, config) -> tuple[list[dict], float, float]:
    """Solve `problems`; returns (records, wall seconds, CPU seconds of this process)."""
    long_engine, short_engine = engines
    t0, c0 = time.perf_counter(), time.process_time()
    recs = solve_problems(problems, long_engine=long_engine, short_engine=short_engine, config=config)
    return recs, time.perf_counter() - t0, time.process_time() - c0


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
    ap.add_argument("--bf16-logits", action="store_true",
                    help="a bf16 model's LM head in bf16 too (fp32_logits=False, as vLLM computes logits); "
                         "default: the engine's fp32 head")
    ap.add_argument("--sequential-first", action="store_true",
                    help="run the one-at-a-time pass first (swap the order to expose drifting CPU load)")
    args = ap.parse_args(argv)

    problems = read_jsonl(args.data, required=["problem"])[: args.problems]
    config = CollabConfig(max_turns=args.max_turns, max_new_tokens_long=args.max_new_tokens_long,
                          max_new_tokens_short=args.max_new_tokens_short, temperature=args.temperature,
                          seed=args.seed, max_active=max(len(problems), 1))
    t0 = time.perf_counter()
    options = {"fp32_logits": False} if args.bf16_logits else {}
    long_engine = make_engine(args.model, **options)
    short_engine = long_engine if args.short_model in (None, args.model) else make_engine(args.short_model, **options)
    engines = (long_engine, short_engine)
    load_s = time.perf_counter() - t0
    # Warm-up (first-call allocations, lazy imports), not timed.
    _run(problems[:1], engines, config.model_copy(update={"max_new_tokens_long": 4, "max_new_tokens_short": 4}))

    def run_batched():
        recs, wall, cpu = _run(problems, engines, config)
        print(f"batched: {len(recs)} dialogues in {wall:.1f}s", file=sys.stderr, flush=True)
        return recs, wall, cpu

    def run_sequential():
        recs, wall, cpu = [], 0.0, 0.0
        for i, p in enumerate(problems, start=1):
            r, w, c = _run([p], engines, config)
            recs, wall, cpu = recs + r, wall + w, cpu + c
            print(f"sequential: {i}/{len(problems)} dialogues, {wall:.1f}s", file=sys.stderr, flush=True)
        return recs, wall, cpu

    if args.sequential_first:
        sequential, t_seq, c_seq = run_sequential()
        batched, t_batched, c_batched = run_batched()
    else:
        batched, t_batched, c_batched = run_batched()
        sequential, t_seq, c_seq = run_sequential()

    def gen_tokens(recs):
        return sum(r["tokens"]["total"] for r in recs)

    tok_b, tok_s = gen_tokens(batched), gen_tokens(sequential)
    tps_b, tps_s = tok_b / t_batched, tok_s / t_seq
    same = sum(a["turns"] == b["turns"] for a, b in zip(batched, sequential, strict=True))
    turns_b = sum(r["num_turns"] for r in batched)


    print(f"collab_throughput: {len(problems)} problems from {Path(args.data).name}, long={args.model}, "
          f"short={args.short_model or args.model}")
    print(f"settings: max_turns={args.max_turns}, max_new_tokens long/short={args.max_new_tokens_long}/"
          f"{args.max_new_tokens_short}, temperature={args.temperature}, seed={args.seed}, "
          f"dtype {next(long_engine.model.parameters()).dtype}, "
          f"LM head {'bf16' if args.bf16_logits else 'fp32'} (both modes)")
    print(f"{header()}; model load {load_s:.1f}s (not timed)")
    print()
    print(f"{'':12} {'gen tokens':>11} {'wall s':>9} {'tokens/s':>10} {'CPU s':>9} {'tokens/CPU-s':>13}")
    print(f"{'sequential':12} {tok_s:>11} {t_seq:>9.1f} {tps_s:>10.2f} {c_seq:>9.1f} {tok_s / c_seq:>13.2f}")
    print(f"{'batched':12} {tok_b:>11} {t_batched:>9.1f} {tps_b:>10.2f} {c_batched:>9.1f} {tok_b / c_batched:>13.2f}")
    print()
    print(f"ratio batched/sequential: {tps_b / tps_s:.2f}x generated tokens/s (target >= 6x); "
          f"{(tok_b / c_batched) / (tok_s / c_seq):.2f}x tokens per CPU-second (less sensitive to other "
          f"processes' load)")
    print(f"identical dialogues: {same}/{len(problems)}; turns per dialogue (batched): "
          f"{turns_b / max(len(batched), 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
