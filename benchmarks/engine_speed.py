"""Generation throughput: longshort's transformers engine vs plain `model.generate()`.

Same model (the embedded SmolLM2-135M by default), same prompts, same greedy settings, one batch,
in one process. Prints generated tokens/s for both and their ratio.

    .venv/bin/python benchmarks/engine_speed.py                      # GPU: 256 x 256; CPU: 8 x 32
    .venv/bin/python benchmarks/engine_speed.py --batch 256 --new-tokens 256
    .venv/bin/python benchmarks/engine_speed.py --prefix-reuse      # also: n samples, KV reuse vs re-encode

On CUDA the engine's fast path (static KV cache + torch.compile'd decode step) is on; both sides
get one untimed warm-up run of the identical workload first (compilation, CUDA graphs, allocator),
so the timed runs compare steady-state speed. Generated tokens are counted up to and including
EOS for both (plain generate keeps decoding padding for rows that finished; that waste is part
of what is measured).

`--prefix-reuse` adds a second table: Monte Carlo style rollouts (a long shared reasoning prefix,
n samples each) with the engine encoding each prefix once and expanding its KV cache
(`reuse_prefix=True`) vs re-encoding it per sample (`reuse_prefix=False`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from _machine import header, load  # noqa: E402

from longshort.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from longshort.engines.hf import HFEngine  # noqa: E402
from longshort.models import load_model  # noqa: E402

TOPICS = ["the sum of the first {k} odd numbers", "why {k} is or is not prime", "{k} squared minus one",
          "the number of divisors of {k}", "how many minutes are in {k} hours", "{k} percent of 250"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Explain step by step: {TOPICS[i % len(TOPICS)].format(k=i + 7)}."}]
            for i in range(n)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_plain(model, tok, chats, new_tokens: int) -> tuple[float, int]:
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    sync()
    dt = time.perf_counter() - t0
    gen = out[:, enc["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    count = sum(row.index(eos) + 1 if eos in row else len(row) for row in gen)
    return dt, count


def run_engine(engine: HFEngine, chats, new_tokens: int) -> tuple[float, int]:
    reqs = [GenerationRequest(messages=c, params=SamplingParams(temperature=0, max_new_tokens=new_tokens))
            for c in chats]
    sync()
    t0 = time.perf_counter()
    res = engine.generate(reqs)
    sync()
    dt = time.perf_counter() - t0
    return dt, sum(c.num_tokens for r in res for c in r.completions)


def run_rollouts(engine: HFEngine, reuse: bool, problems: int, n: int, new_tokens: int) -> tuple[float, int]:
    engine.config.reuse_prefix = reuse
    prefix = "<think>\n" + "\n\n".join(
        f"Step {k}: we rewrite the expression and check the arithmetic once more, carefully." for k in range(24))
    reqs = [GenerationRequest(messages=c, assistant_prefix=prefix, params=SamplingParams(
        temperature=0.8, max_new_tokens=new_tokens, n=n, seed=i)) for i, c in enumerate(prompts(problems))]
    sync()
    t0 = time.perf_counter()
    res = engine.generate(reqs)
    sync()
    return time.perf_counter() - t0, sum(c.num_tokens for r in res for c in r.completions)


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model spec (default: the embedded SmolLM2-135M)")
    ap.add_argument("--batch", type=int, default=256 if cuda else 8, help="prompts in the batch")
    ap.add_argument("--new-tokens", type=int, default=256 if cuda else 32, help="max new tokens per prompt")
    ap.add_argument("--fast-path", choices=["auto", "on", "off"], default="auto",
                    help="engine fast path (static cache + torch.compile); auto = on with CUDA")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=cuda,
                    help="one untimed run of each side first (default: on with CUDA)")
    ap.add_argument("--prefix-reuse", action="store_true", help="also time n-sample rollouts: KV reuse vs re-encode")
    ap.add_argument("--samples", type=int, default=8, help="n per problem for --prefix-reuse")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    print(header())
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    engine = HFEngine.from_model(model, tok, batch_size=args.batch, fast_path=args.fast_path)
    chats = prompts(args.batch)
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                         f"{torch.get_num_threads()} threads)"
    print(f"model={args.model} device={device} dtype={next(model.parameters()).dtype} "
          f"batch={args.batch} new_tokens={args.new_tokens} engine_fast_path={engine.fast} "
          f"torch={torch.__version__}")
    warm = {}
    if args.warmup:
        t0 = time.perf_counter()
        run_plain(model, tok, chats, args.new_tokens)
        warm["plain"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_engine(engine, chats, args.new_tokens)
        warm["engine"] = time.perf_counter() - t0
        print(f"warm-up (untimed): plain {warm['plain']:.1f}s, engine {warm['engine']:.1f}s")
    p_dt, p_tok = run_plain(model, tok, chats, args.new_tokens)
    e_dt, e_tok = run_engine(engine, chats, args.new_tokens)
    p_tps, e_tps = p_tok / p_dt, e_tok / e_dt
    print(f"{'':24}{'seconds':>10}{'gen tokens':>12}{'tok/s':>10}")
    print(f"{'model.generate()':24}{p_dt:>10.2f}{p_tok:>12d}{p_tps:>10.1f}")
    print(f"{'longshort HFEngine':24}{e_dt:>10.2f}{e_tok:>12d}{e_tps:>10.1f}")
    print(f"ratio engine/plain: {e_tps / p_tps:.2f}x tok/s")
    if args.prefix_reuse:
        problems = max(1, args.batch // args.samples)
        new = max(4, args.new_tokens // 4)
        print(f"\nrollouts: {problems} problems x n={args.samples}, ~470-token shared prefix, {new} new tokens")
        if args.warmup:
            run_rollouts(engine, True, problems, args.samples, new)
            run_rollouts(engine, False, problems, args.samples, new)
        r_dt, r_tok = run_rollouts(engine, True, problems, args.samples, new)
        n_dt, n_tok = run_rollouts(engine, False, problems, args.samples, new)
        print(f"{'':24}{'seconds':>10}{'gen tokens':>12}{'tok/s':>10}")
        print(f"{'re-encode per sample':24}{n_dt:>10.2f}{n_tok:>12d}{n_tok / n_dt:>10.1f}")
        print(f"{'encode once, reuse KV':24}{r_dt:>10.2f}{r_tok:>12d}{r_tok / r_dt:>10.1f}")
        print(f"ratio reuse/re-encode: {(r_tok / r_dt) / (n_tok / n_dt):.2f}x tok/s")
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
