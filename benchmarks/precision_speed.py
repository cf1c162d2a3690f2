"""bf16 vs fp32 on this machine: generation, one SFT step, and how close the results are.

Same model (SmolLM2-135M by default), same work, one process, side by side:

- generation: the transformers engine, a batch of greedy requests, bf16 weights (fp32 LM head,
  the engine's default; and a bf16 LM head, `fp32_logits=False`, as vLLM computes logits) vs fp32
  weights, the three interleaved `--repeats` times (best time each);
- one SFT step (forward + backward + AdamW step) on a batch of real-text sequences: fp32 master
  weights, under ``torch.autocast(bfloat16)`` (what TrainingArguments(bf16=True) does) vs plain fp32;
- agreement on planted-task prompts (thoughts.synthetic): the share of greedy tokens equal to
  fp32's up to the first divergence, and the mean |logprob difference| of fp32's greedy tokens
  scored by both.

Prints the speed-ups (target >= 1.5x on CPUs with AMX-BF16/AVX512-BF16), whether this CPU has
native bf16 (`longshort.models.cpu_has_bf16`; without it bf16 is emulated and slower, which is
why `precision: auto` picks fp32 there), and the load average.

    .venv/bin/python benchmarks/precision_speed.py [--model smollm2-135m] [--batch 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from _machine import load  # noqa: E402

from longshort.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from longshort.engines.hf import HFEngine  # noqa: E402
from longshort.models import cpu_has_bf16, load_model  # noqa: E402
from longshort.thoughts.synthetic import generate as planted  # noqa: E402


def chats(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": rec["problem"]}] for rec in planted(n, seed=3)]


def gen_times(engines: dict[str, HFEngine], reqs: list[GenerationRequest], repeats: int) -> dict[str, tuple]:
    """Best wall time of `engine.generate(reqs)` per engine, with its results; one warm-up each,
    then the engines take turns `repeats` times, so a change in the machine's load hits every
    variant."""
    for engine in engines.values():
        engine.generate(reqs[:1])  # warm-up
    best: dict[str, tuple] = {name: (float("inf"), None) for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            res = engine.generate(reqs)
            t = time.perf_counter() - t0
            if t < best[name][0]:
                best[name] = (t, res)
    return best


def sft_step_time(model, batch, bf16: bool, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (optimizer state, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scored(engine: HFEngine, req: GenerationRequest, tokens: list[int]) -> torch.Tensor:
    prompt = engine.encode(engine.render(req))
    ids = torch.tensor([prompt + tokens])
    with torch.inference_mode():
        logp = engine.model(ids).logits[0].float().log_softmax(-1)
    return torch.stack([logp[len(prompt) - 1 + i, t] for i, t in enumerate(tokens)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8, help="requests in the generation batch")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sft-batch", type=int, default=4)
    ap.add_argument("--sft-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    print(f"model={args.model} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"cpu_has_bf16={cpu_has_bf16()} (auto picks {'bf16' if cpu_has_bf16() else 'fp32'} here)")
    print(f"load average before: {load()}")
    reqs = [GenerationRequest(messages=c, params=SamplingParams(temperature=0, max_new_tokens=args.new_tokens))
            for c in chats(args.batch)]
    engines = {name: HFEngine(args.model, device="cpu", dtype=name) for name in ("fp32", "bf16")}
    # the LM head in bf16 too (fp32_logits=False: logits rounded to bf16, then cast up, as vLLM does)
    engines["bf16-head"] = HFEngine(args.model, device="cpu", dtype="bf16", fp32_logits=False)
    gen = gen_times(engines, reqs, args.repeats)

    tok_fp32 = [c.token_ids for r in gen["fp32"][1] for c in r.completions]
    same_prefix, diffs = {}, {}
    for name in ("bf16", "bf16-head"):
        toks = [c.token_ids for r in gen[name][1] for c in r.completions]
        same_prefix[name] = []
        for a, b in zip(tok_fp32, toks, strict=True):
            k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            same_prefix[name].append(k / max(1, len(a)))
        diffs[name] = torch.cat([(scored(engines[name], r, t) - scored(engines["fp32"], r, t)).abs()
                                 for r, t in zip(reqs, tok_fp32, strict=True)])
    n_tok = sum(len(t) for t in tok_fp32)

    text = " ".join(r["response"] for r in planted(4, seed=5))
    ids = engines["fp32"].encode(text)
    need = args.sft_batch * args.sft_tokens
    ids = (ids * (need // max(1, len(ids)) + 1))[:need]
    batch = torch.tensor(ids).view(args.sft_batch, args.sft_tokens)
    del engines
    sft = {}
    for name in ("fp32", "bf16"):
        model, _ = load_model(args.model, dtype="float32", device="cpu")  # fp32 master weights both times
        sft[name] = sft_step_time(model, batch, name == "bf16", args.repeats)
        del model

    print(f"{'':28}{'fp32 s':>10}{'bf16 s':>10}{'speed-up':>10}")
    print(f"{f'generate {args.batch}x{args.new_tokens} greedy':28}{gen['fp32'][0]:>10.2f}{gen['bf16'][0]:>10.2f}"
          f"{gen['fp32'][0] / gen['bf16'][0]:>9.2f}x   (the engine's default: fp32 LM head)")
    print(f"{'  with a bf16 LM head':28}{gen['fp32'][0]:>10.2f}{gen['bf16-head'][0]:>10.2f}"
          f"{gen['fp32'][0] / gen['bf16-head'][0]:>9.2f}x   (fp32_logits=False)")
    print(f"{f'SFT step {args.sft_batch}x{args.sft_tokens} tokens':28}{sft['fp32']:>10.2f}{sft['bf16']:>10.2f}"
          f"{sft['fp32'] / sft['bf16']:>9.2f}x")
    for name, label in (("bf16", "bf16"), ("bf16-head", "bf16 with a bf16 LM head")):
        print(f"{label}: greedy agreement (share of each fp32 continuation reproduced before diverging) "
              f"{statistics.mean(same_prefix[name]):.3f} over {len(same_prefix[name])} planted prompts; "
              f"mean |logprob - fp32's| on fp32's {n_tok} greedy tokens {diffs[name].mean().item():.4f} "
              f"(max {diffs[name].max().item():.4f})")
    print("target: both speed-ups >= 1.5x on a CPU with native bf16")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
