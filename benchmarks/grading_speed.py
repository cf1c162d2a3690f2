"""Benchmark: how fast answers are graded, and the wall time of a CPU evaluation run (issue 3).

Part 1 (grading): every MATH500 reference solution graded against its gold answer, four ways,
printed side by side with ratios to the default:

- default     `grade()` in the main thread: exact match of normalised strings first, then
              math-verify, under a per-item SIGALRM deadline;
- mv-only     the same with `exact_match_first=False`: every item goes through math-verify's
              parse + verify (the cost of the symbolic path);
- thread      the default rules called from a worker thread, where signals cannot be used: each
              item goes to the helper grading process (JSON over a pipe);
- raw-mv      math-verify's own `parse` + `verify` on the boxed strings with its signal timeouts
              (the library alone, no extraction or normalisation), for reference.

It also prints how many items each way judged correct (all four should say 500/500).

Part 2 (eval): `longshort eval --benchmark gsm8k --limit N --mode collab` with the embedded
SmolLM2-135M pair on CPU, timed end to end as a subprocess (model load included).

    .venv/bin/python benchmarks/grading_speed.py                    # part 1 + eval with --limit 100
    .venv/bin/python benchmarks/grading_speed.py --eval-limit 10    # a shorter eval
    .venv/bin/python benchmarks/grading_speed.py --skip-eval
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import header

from longshort.evaluation.benchmarks import load_benchmark
from longshort.evaluation.grading import GradingConfig, extract_boxed, grade_detail

ROOT = Path(__file__).resolve().parents[1]


def _time(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    ok = fn()
    return time.perf_counter() - t0, ok


def grading_part(data_dir: str | None) -> None:
    recs = load_benchmark("math500", data_dir=data_dir)
    n = len(recs)
    mv_only = GradingConfig(exact_match_first=False)

    def default() -> int:
        return sum(grade_detail(r["solution"], r["answer"]).correct for r in recs)

    def mvonly() -> int:
        return sum(grade_detail(r["solution"], r["answer"], config=mv_only).correct for r in recs)

    def threaded() -> int:
        box: list[int] = []
        th = threading.Thread(target=lambda: box.append(default()))
        th.start()
        th.join()
        return box[0]

    def raw() -> int:
        from math_verify import parse, verify

        return sum(bool(verify(parse(f"${r['answer']}$"), parse(f"${extract_boxed(r['solution'])}$")))
                   for r in recs)

    grade_detail(r"\boxed{1}", "1")  # warm-up: imports
    rows = []
    for name, fn in (("default", default), ("mv-only", mvonly), ("thread", threaded), ("raw-mv", raw)):
        dt, ok = _time(fn)
        rows.append((name, dt, ok))
    base = rows[0][1]
    print(f"MATH500 gold vs gold: {n} items (CPU shared with other jobs: timings are noisy)")
    print(f"{'way':<10}{'correct':>10}{'seconds':>10}{'items/s':>12}{'time ÷ default':>16}")
    for name, dt, ok in rows:
        print(f"{name:<10}{ok:>6}/{n:<3}{dt:>10.2f}{n / dt:>12.1f}{dt / base:>16.2f}")


def eval_part(limit: int, timeout: float, keep: str | None) -> None:
    out = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="grading_speed_")) / "run"
    cmd = [str(ROOT / ".venv" / "bin" / "longshort"), "eval", "--benchmark", "gsm8k", "--mode", "collab",
           "--limit", str(limit), "--out", str(out), "--no-progress", "--no-resume"]
    if not Path(cmd[0]).exists():
        cmd[0:1] = [sys.executable, "-m", "longshort.cli"]
    print("\n$ " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        done = sum(1 for _ in open(out / "predictions.jsonl")) if (out / "predictions.jsonl").exists() else 0
        print(f"timed out after {timeout:.0f} s with {done}/{limit} problems done ({out})")
        return
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return
    m = json.loads((out / "metrics.json").read_text())
    tok = m["tokens"]
    print(proc.stdout.strip())
    print(f"{'problems':<10}{'wall s':>10}{'s/problem':>11}{'tokens/sample':>15}{'long':>8}{'short':>8}"
          f"{'turns':>7}{'gen tok/s':>11}{'Pass@1':>8}")
    print(f"{m['problems']:<10}{wall:>10.1f}{wall / m['problems']:>11.1f}{tok['total']:>15.1f}{tok['long']:>8.1f}"
          f"{tok['short']:>8.1f}{m['turns']:>7.2f}{tok['total'] * m['records'] / wall:>11.1f}"
          f"{100 * m['accuracy']:>7.1f}%")
    print(f"(run directory: {out})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="benchmark directory (default: ../shared/benchmarks)")
    ap.add_argument("--eval-limit", type=int, default=100, help="GSM8K problems in the timed eval")
    ap.add_argument("--eval-timeout", type=float, default=3 * 3600, help="hard limit (s) of the eval")
    ap.add_argument("--eval-out", default=None, help="keep the eval run here (default: a temp dir)")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-grading", action="store_true")
    args = ap.parse_args()
    print(header())
    if not args.skip_grading:
        grading_part(args.data_dir)
    if not args.skip_eval:
        eval_part(args.eval_limit, args.eval_timeout, args.eval_out)


if __name__ == "__main__":
    main()
