"""Nucleus sampling cost: the same requests decoded with `top_p` < 1 vs `top_p` = 1.

Same engine, model, prompts, seeds, temperature and token limits, in one process; only `top_p`
differs. Prints seconds and generated tokens/s for both, their ratio (the price of nucleus
sampling; the target is <= 1.5x on `tiny-random`, whose flat distributions put most of the
vocabulary in the nucleus), the time spent inside `sample_tokens` alone, and the load average.
`--sort` adds a third row: the same nucleus drawn by sorting every row's vocabulary (the
reference method, what the engine did before), to show what the sort costs.

    .venv/bin/python benchmarks/sampling_speed.py                     # tiny-random, 16 x n=2 x 128
    .venv/bin/python benchmarks/sampling_speed.py --model smollm2-135m --top-p 0.9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from _machine import load  # noqa: E402

from longshort.engines import hf, sampling  # noqa: E402
from longshort.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from longshort.engines.hf import HFEngine  # noqa: E402

QUESTIONS = ["What is {k} + {k}?", "Is {k} prime? Explain.", "List the divisors of {k}.",
             "How many minutes are in {k} hours?"]


def requests(k: int, n: int, new_tokens: int, top_p: float, temperature: float) -> list[GenerationRequest]:
    return [GenerationRequest(messages=[{"role": "user", "content": QUESTIONS[i % 4].format(k=i + 3)}],
                              params=SamplingParams(temperature=temperature, top_p=top_p, n=n, seed=i,
                                                    max_new_tokens=new_tokens))
            for i in range(k)]


def timed(engine: HFEngine, reqs: list[GenerationRequest]) -> tuple[float, int, float]:
    """(seconds, generated tokens, seconds inside sample_tokens)."""
    spent = [0.0]
    inner = hf.sample_tokens

    def counting(*a, **kw):
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    hf.sample_tokens = counting
    try:
        t0 = time.perf_counter()
        res = engine.generate(reqs)
        dt = time.perf_counter() - t0
    finally:
        hf.sample_tokens = inner
    return dt, sum(c.num_tokens for r in res for c in r.completions), spent[0]


def sort_nucleus(probs, cdf, top_p, seeds, step, first):
    """The nucleus draw of the reference method: a full sort of each row for its threshold."""
    return sampling._threshold_draws(probs, top_p, seeds, step, 0, threshold=sampling.nucleus_threshold_by_sort)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random", help="model spec (default: tiny-random)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--n", type=int, default=2, help="samples per request")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--sort", action="store_true", help="also time the full-sort reference nucleus")
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two settings this many times; "
                                                           "the best time of each is reported")
    args = ap.parse_args()

    engine = HFEngine(args.model, device="cpu")
    print(f"model={args.model} requests={args.requests} n={args.n} new_tokens={args.new_tokens} "
          f"temperature={args.temperature} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"load average before: {load()}")
    engine.generate(requests(2, 1, 4, args.top_p, args.temperature))  # warm-up (allocator, first calls)
    runs = {f"top_p {args.top_p:g}": args.top_p, "top_p 1": 1.0}
    if args.sort:
        runs[f"top_p {args.top_p:g} sort"] = args.top_p
    best: dict[str, tuple[float, int, float]] = {}
    for _ in range(args.repeats):
        for name, top_p in runs.items():
            ours = sampling._nucleus_draws
            if name.endswith("sort"):
                sampling._nucleus_draws = sort_nucleus
            try:
                got = timed(engine, requests(args.requests, args.n, args.new_tokens, top_p, args.temperature))
            finally:
                sampling._nucleus_draws = ours
            if name not in best or got[0] < best[name][0]:
                best[name] = got
    print(f"{'':20}{'seconds':>10}{'gen tokens':>12}{'tok/s':>10}{'in sampler s':>14}")
    for name in sorted(runs, key=lambda k: (runs[k] < 1, k)):
        dt, n, s = best[name]
        print(f"{name:20}{dt:>10.2f}{n:>12d}{n / dt:>10.1f}{s:>14.2f}")
    ratio = best[f"top_p {args.top_p:g}"][0] / best["top_p 1"][0]
    print(f"ratio time top_p {args.top_p:g} / top_p 1: {ratio:.2f}x (target <= 1.5x)")
    if args.sort:
        print(f"ratio time full-sort nucleus / top_p 1: {best[f'top_p {args.top_p:g} sort'][0] / best['top_p 1'][0]:.2f}x")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
