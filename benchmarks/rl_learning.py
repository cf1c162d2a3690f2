"""Learning checks of the multi-turn RL stage (not a test): does GRPO raise the reward?

Two checks, both on the embedded SmolLM2-135M (`smollm2-135m`) with the partner frozen:

``sanity`` (issue 9, point 4a): a dense reward that the raw model can move, ``brevity`` (pays
``1 - own tokens / turn limit`` for the trained role's turns) or ``keyword`` (1.0 when the
trained role's turns contain ``--keyword``). Prints the training curve (mean reward of the
first vs the last ``--window`` steps) and a held-out evaluation before vs after training (the
same problems and sampling seeds), with the 95% interval of the paired difference.

``real`` (point 4b): the real reward (`training.rewards`: leak-free correctness, format,
length) on planted problems (`longshort.thoughts.synthetic`). Each seed gives both roles a quick
cold-start SFT on the planted traces (the long turn holds the essential computations, the short
turn boxes the answer), or uses ``--long-sft/--short-sft`` directories, measures the trained
role's reward, accuracy and tokens on held-out problems, trains it with GRPO (dynamic sampling,
constant learning rate, ``--problems-per-step`` problems per step) and measures again. The
paired difference after - before over held-out problems x seeds gets a 95% interval.

Run:
  .venv/bin/python benchmarks/rl_learning.py sanity                       # ~20 steps
  .venv/bin/python benchmarks/rl_learning.py real --seeds 3               # hours on 2 CPU cores
  .venv/bin/python benchmarks/rl_learning.py real --seeds 3 --steps 4 --train-problems 32 \\
      --eval-problems 10 --sft-steps 30                                   # a small version
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from _machine import header, load

# ----------------------------------------------------------------------------- data and cold start


def make_problems(n: int, seed: int, *, num_ops: int, max_operand: int, prefix: str) -> list[dict]:
    from longshort.thoughts.synthetic import SynthConfig, generate

    cfg = SynthConfig(num_ops=num_ops, max_operand=max_operand, redundancy=1, vary_ops=False)
    return generate(n, seed=seed, config=cfg, id_prefix=prefix)


def essential_text(trace: dict) -> str:
    """The planted trace's essential computations (its gold `essential` thoughts), in order."""
    from longshort.thoughts.steps import split_steps

    steps = split_steps(trace["response"]).steps
    parts = [" ".join(steps[t["start"] - 1:t["end"]]) for t in trace["gold_thoughts"] if t["essential"]]
    return "\n\n".join(parts)


def cold_start(model: str, traces: list[dict], out: Path, *, steps: int, lr: float, seed: int) -> dict[str, str]:
    """A quick cold-start SFT of both roles on the planted traces: the long turn holds the
    essential computations, the short turn states the boxed answer (the shape coldstart aims
    for). Returns the two model directories."""
    from longshort.dialogue.protocol import render_input
    from longshort.training.sft import SFTRunConfig, run_sft

    out.mkdir(parents=True, exist_ok=True)
    dirs = {}
    for role in ("long", "short"):
        recs = []
        for p in traces:
            long_turn = "<think>\n" + essential_text(p) + "\n</think>"
            if role == "long":
                messages, prefix = render_input("long", p["problem"], [])
                completion = long_turn
            else:
                messages, prefix = render_input("short", p["problem"], [long_turn])
                completion = f"<answer>\nSo the answer is \\boxed{{{p['answer']}}}.\n</answer>"
            recs.append({"id": f"{p['id']}-{role}", "role": role, "prompt": messages, "assistant_prefix": prefix,
                         "completion": completion})
        data = out / f"sft_{role}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in recs))
        dirs[role] = run_sft(SFTRunConfig(role=role, data=str(data), model=model, out=str(out / f"sft_{role}"),
                                          max_steps=steps, batch_size=8, lr=lr, warmup=0, save_steps=10**6,
                                          report_to="none", resume=True, max_length=512, seed=seed))
    return dirs


# ----------------------------------------------------------------------------- rewards


def sanity_reward(kind: str, limit: int, keyword: str):
    """The dense sanity reward, a TRL-style reward function over the rollout's parsed turns."""

    def sanity(completions, turns, trained_role, **kwargs):
        out = []
        for dialogue, role in zip(turns, trained_role, strict=True):
            own = [t for t in dialogue if t["role"] == role]
            if kind == "brevity":
                out.append(statistics.fmean(max(0.0, 1.0 - t["tokens"] / limit) for t in own) if own else 0.0)
            else:
                out.append(float(any(keyword.lower() in t["text"].lower() for t in own)))
        return out

    return sanity


def evaluate(policy_spec: str, partner, role: str, problems: list[dict], dialogue, scorer, *, samples: int,
             seed: int, temperature: float) -> list[dict]:
    """Play each problem `samples` times with `policy_spec` as `role` (seeded); per problem, the
    mean total reward, each reward part, accuracy (committed answer right) and tokens."""
    import torch

    from longshort.models import load_model
    from longshort.training import rewards as R
    from longshort.training.rl import DialogueRollout

    model, tok = load_model(policy_spec, device="cpu")
    rollout = DialogueRollout(role, partner, dialogue, temperature=temperature)
    rows = [p for p in problems for _ in range(samples)]
    torch.manual_seed(seed)
    out = rollout.play([p["problem"] for p in rows], model, tok)
    parts = scorer.score(out, rows, tok)
    right = R.correctness_reward([""] * len(rows), answer=[str(p["answer"]) for p in rows],
                                 final_answer=out["final_answer"])
    per = []
    for i, p in enumerate(problems):
        block = range(i * samples, (i + 1) * samples)
        rec = {"id": p["id"], "reward": statistics.fmean(scorer.total(parts[j]) or 0.0 for j in block),
               "accuracy": statistics.fmean(right[j] for j in block),
               "role_tokens": statistics.fmean(out["role_tokens"][j] for j in block),
               "dialogue_tokens": statistics.fmean(out["dialogue_tokens"][j] for j in block),
               "finished": statistics.fmean(float(out["finished"][j]) for j in block)}
        for k, name in enumerate(scorer.names):
            rec[name] = statistics.fmean(float(parts[j][k] or 0.0) for j in block)
        per.append(rec)
    del model
    return per


# ----------------------------------------------------------------------------- statistics


def paired(before: list[dict], after: list[dict], key: str) -> tuple[float, float, float, float, float]:
    """(mean before, mean after, mean difference, 95% low, 95% high) of after - before, paired by
    row (a held-out problem of one seed); normal interval mean ± 1.96 sd / sqrt(n)."""
    from longshort.evaluation.metrics import mean_interval

    diffs = [a[key] - b[key] for b, a in zip(before, after, strict=True)]
    est = mean_interval(diffs, lower=-math.inf, upper=math.inf)
    lo = est.low if est.low is not None else float("nan")
    hi = est.high if est.high is not None else float("nan")
    return statistics.fmean(b[key] for b in before), statistics.fmean(a[key] for a in after), est.mean, lo, hi


def print_paired(title: str, before: list[dict], after: list[dict], keys: list[str]) -> dict:
    print(f"\n{title} (n = {len(before)} paired rows)")
    print(f"  {'metric':<22}{'before':>10}{'after':>10}{'after-before':>14}   95% interval      excludes 0")
    res = {}
    for k in keys:
        b, a, d, lo, hi = paired(before, after, k)
        excl = "yes" if (lo > 0 or hi < 0) else "no"
        print(f"  {k:<22}{b:>10.3f}{a:>10.3f}{d:>+14.3f}   [{lo:+.3f}, {hi:+.3f}]   {excl}")
        res[k] = {"before": b, "after": a, "diff": d, "low": lo, "high": hi}
    return res


def curve(log_history: list[dict], key: str, window: int) -> tuple[float, float, list[float]]:
    values = [h[key] for h in log_history if key in h]
    if not values:
        return float("nan"), float("nan"), []
    return statistics.fmean(values[:window]), statistics.fmean(values[-window:]), values


# ----------------------------------------------------------------------------- the two checks


def _rl_config(args, specs: dict, data: Path, out: Path, seed: int, dialogue, batch_size: int):
    """One GRPO iteration whose optimizer step sees `batch_size` dialogues, generated together and
    trained `--micro-batch` at a time with activation checkpointing (as the CPU recipes do: the
    whole generation batch in one forward pass needs ~24 GB at 8 problems x 4 dialogues of ~600
    tokens)."""
    from longshort.training.rl import RLRunConfig

    micro = max(d for d in range(1, min(args.micro_batch, batch_size) + 1) if batch_size % d == 0)
    return RLRunConfig(long=specs["long"], short=specs["short"], data=str(data), out=str(out), iterations=1,
                       first=args.role, max_steps=args.steps, num_generations=args.num_generations,
                       batch_size=micro, grad_accum=batch_size // micro, gradient_checkpointing=True,
                       lr=args.lr, lr_scheduler_type="constant", dialogue=dialogue,
                       report_to="none", save_steps=10**6, logging_steps=1, seed=seed, resume=True,
                       temperature=args.temperature, dynamic_sampling=not args.no_dynamic_sampling,
                       dynamic_max_rounds=args.dynamic_max_rounds,
                       problem_filter="intermediate" if getattr(args, "filter", False) else "none")


def run_sanity(args, out: Path) -> dict:
    from longshort.dialogue.collab import CollabConfig
    from longshort.engines.hf import HFEngine
    from longshort.training.rl import RolloutScorer, run_rl

    limit = args.max_new_tokens_long if args.role == "long" else args.max_new_tokens_short
    reward = sanity_reward(args.reward, limit, args.keyword)
    scorer = RolloutScorer([reward])
    train = make_problems(args.train_problems, args.seed, num_ops=1, max_operand=9, prefix="t-")
    held = make_problems(args.eval_problems, args.seed + 1000, num_ops=1, max_operand=9, prefix="h-")
    data = out / "problems.jsonl"
    data.write_text("".join(json.dumps({k: p[k] for k in ("id", "problem", "answer")}) + "\n" for p in train))
    dialogue = CollabConfig(max_turns=1, max_new_tokens_long=args.max_new_tokens_long,
                            max_new_tokens_short=args.max_new_tokens_short)
    specs = {"long": args.model, "short": args.model}
    other = "short" if args.role == "long" else "long"
    partner = HFEngine(specs[other], device="cpu")
    batch = args.problems_per_step * args.num_generations
    print(f"sanity check: reward {args.reward}, model {args.model}, {args.role} role, {args.steps} GRPO steps of "
          f"{args.problems_per_step} problems x {args.num_generations}, lr {args.lr} (constant)", flush=True)
    t0 = time.time()
    before = evaluate(specs[args.role], partner, args.role, held, dialogue, scorer, samples=args.eval_samples,
                      seed=123, temperature=args.temperature)
    t_eval = time.time() - t0
    t0 = time.time()
    run_rl(_rl_config(args, specs, data, out / "rl", args.seed, dialogue, batch), reward_funcs=[reward])
    t_train = time.time() - t0
    trained = str(out / "rl" / f"iter0_{args.role}")
    after = evaluate(trained, partner, args.role, held, dialogue, scorer, samples=args.eval_samples, seed=123,
                     temperature=args.temperature)
    history = json.loads((Path(trained) / "metrics.json").read_text())["log_history"]
    start, end, values = curve(history, "reward", args.window)
    print(f"\ntraining curve, mean reward per step: {' '.join(f'{v:.2f}' for v in values)}")
    print(f"  first {args.window} steps {start:.3f} -> last {args.window} steps {end:.3f} (x{end / start:.2f})"
          if start else f"  first {args.window} steps {start:.3f} -> last {args.window} steps {end:.3f}")
    zero = [h.get("dynamic/zero_std_groups") for h in history if "reward" in h]
    print(f"  groups without signal before dynamic sampling, per step: {zero}")
    res = print_paired(f"held-out ({args.eval_problems} problems x {args.eval_samples} dialogues, same seeds): "
                       "initial vs trained policy", before, after, ["reward", "role_tokens"])
    print(f"\nwall: training {t_train:.0f} s ({t_train / args.steps:.1f} s/step), one evaluation {t_eval:.0f} s")
    return {"curve": values, "curve_start": start, "curve_end": end, "held_out": res, "train_s": t_train,
            "eval_s": t_eval, "zero_std_groups": zero}


def run_real(args, out: Path) -> dict:
    from longshort.dialogue.collab import CollabConfig
    from longshort.engines.hf import HFEngine
    from longshort.training import rewards as R
    from longshort.training.rl import RolloutScorer, reward_functions, run_rl

    rcfg = R.RewardConfig(length_budget=args.length_budget)
    scorer = RolloutScorer(reward_functions(rcfg), rcfg.weights())
    dialogue = CollabConfig(max_turns=args.max_turns, max_new_tokens_long=args.max_new_tokens_long,
                            max_new_tokens_short=args.max_new_tokens_short)
    held = make_problems(args.eval_problems, 10_000, num_ops=args.num_ops, max_operand=args.max_operand,
                         prefix="held-")
    before_all, after_all, per_seed, timings = [], [], [], []
    shared = None
    if args.shared_sft and not (args.long_sft and args.short_sft):
        # one cold start (seed 0's training problems), the starting point of every seed's RL run
        t0 = time.time()
        train0 = make_problems(args.train_problems, 0, num_ops=args.num_ops, max_operand=args.max_operand,
                               prefix="s0-")
        shared = cold_start(args.model, train0, out / "cold_start", steps=args.sft_steps, lr=args.sft_lr, seed=0)
        print(f"shared cold start: {time.time() - t0:.0f} s ({args.sft_steps} SFT steps per role)", flush=True)
    for seed in range(args.seeds):
        t_seed = time.time()
        sd = out / f"seed{seed}"
        sd.mkdir(parents=True, exist_ok=True)
        done = sd / "result.json"
        if done.exists():  # a finished seed of an interrupted run: its rows, not a rerun
            saved = json.loads(done.read_text())
            before_all += saved["before"]
            after_all += saved["after"]
            per_seed.append(saved["info"])
            timings.append(saved["info"]["seed_s"])
            print(f"seed {seed}: loaded from {done}", flush=True)
            continue
        train = make_problems(args.train_problems, seed, num_ops=args.num_ops, max_operand=args.max_operand,
                              prefix=f"s{seed}-")
        t0 = time.time()
        if args.long_sft and args.short_sft:
            specs = {"long": args.long_sft, "short": args.short_sft}
        elif shared:
            specs = shared
        else:
            specs = cold_start(args.model, train, sd, steps=args.sft_steps, lr=args.sft_lr, seed=seed)
        t_sft = time.time() - t0
        data = sd / "problems.jsonl"
        data.write_text("".join(json.dumps({k: p[k] for k in ("id", "problem", "answer")}) + "\n" for p in train))
        other = "short" if args.role == "long" else "long"
        partner = HFEngine(specs[other], device="cpu")
        t0 = time.time()
        before = evaluate(specs[args.role], partner, args.role, held, dialogue, scorer, samples=args.eval_samples,
                          seed=1000 + seed, temperature=args.eval_temperature)
        t_eval = time.time() - t0
        t0 = time.time()
        run_rl(_rl_config(args, specs, data, sd / "rl", seed, dialogue, args.problems_per_step * args.num_generations))
        t_rl = time.time() - t0
        trained = str(sd / "rl" / f"iter0_{args.role}")
        after = evaluate(trained, partner, args.role, held, dialogue, scorer, samples=args.eval_samples,
                         seed=1000 + seed, temperature=args.eval_temperature)
        partner.close()
        history = json.loads((Path(trained) / "metrics.json").read_text())["log_history"]
        steps = [h for h in history if "reward" in h]
        info = {"seed": seed, "sft_s": round(t_sft), "rl_s": round(t_rl), "eval_s": round(t_eval),
                "seed_s": round(time.time() - t_seed),
                "reward_curve": [round(h["reward"], 3) for h in steps],
                "zero_std_groups": [h.get("dynamic/zero_std_groups") for h in steps],
                "signal_groups": [h.get("dynamic/signal_groups") for h in steps],
                "before_reward": statistics.fmean(r["reward"] for r in before),
                "after_reward": statistics.fmean(r["reward"] for r in after)}
        print(f"seed {seed}: SFT {t_sft:.0f} s, RL {t_rl:.0f} s ({args.steps} steps), eval {t_eval:.0f} s; "
              f"training reward per step {info['reward_curve']}; groups without signal before resampling "
              f"{info['zero_std_groups']}, with signal after {info['signal_groups']}; held-out reward "
              f"{info['before_reward']:.3f} -> {info['after_reward']:.3f}", flush=True)
        done.write_text(json.dumps({"info": info, "before": before, "after": after}))
        before_all += before
        after_all += after
        per_seed.append(info)
        timings.append(time.time() - t_seed)
    res = print_paired(f"held-out planted problems ({args.eval_problems} x {args.eval_samples} dialogues per seed, "
                       f"{args.seeds} seeds), {args.role} role before vs after RL", before_all, after_all,
                       ["reward", "accuracy", "correctness_reward", "format_reward", "length_reward",
                        "role_tokens", "dialogue_tokens", "finished"])
    return {"held_out": res, "per_seed": per_seed, "seed_s": timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="check", required=True)
    for name in ("sanity", "real"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2-135m", help="model of both roles (the partner stays frozen)")
        p.add_argument("--role", default="long", choices=["long", "short"], help="role to train")
        p.add_argument("--num-generations", type=int, default=4)
        p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the trained role")
        p.add_argument("--no-dynamic-sampling", action="store_true")
        p.add_argument("--dynamic-max-rounds", type=int, default=3)
        p.add_argument("--eval-samples", type=int, default=2, help="dialogues per held-out problem")
        p.add_argument("--threads", type=int, default=2, help="torch threads")
        p.add_argument("--micro-batch", type=int, default=2, help="dialogues per forward pass of training "
                       "(the step's dialogues are accumulated over micro-batches, with activation checkpointing)")
        p.add_argument("--out", default=None, help="run directory (default: a temp dir)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--window", type=int, default=5, help="steps averaged at the start and the end of the curve")
    s = sub.choices["sanity"]
    s.add_argument("--reward", default="brevity", choices=["brevity", "keyword"])
    s.add_argument("--keyword", default="answer", help="word paid for by --reward keyword")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--problems-per-step", type=int, default=4)
    s.add_argument("--train-problems", type=int, default=200)
    s.add_argument("--eval-problems", type=int, default=16)
    s.add_argument("--lr", type=float, default=3e-5)
    s.add_argument("--max-new-tokens-long", type=int, default=32)
    s.add_argument("--max-new-tokens-short", type=int, default=16)
    r = sub.choices["real"]
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--steps", type=int, default=30, help="GRPO steps per seed")
    r.add_argument("--problems-per-step", type=int, default=8)
    r.add_argument("--train-problems", type=int, default=96)
    r.add_argument("--eval-problems", type=int, default=30, help="held-out planted problems (the same every seed)")
    r.add_argument("--num-ops", type=int, default=2)
    r.add_argument("--max-operand", type=int, default=9)
    r.add_argument("--sft-steps", type=int, default=60, help="cold-start SFT steps per role (batch 8)")
    r.add_argument("--sft-lr", type=float, default=1e-4)
    r.add_argument("--long-sft", default=None, help="SFT'd long model directory (skips the cold start)")
    r.add_argument("--short-sft", default=None, help="SFT'd short model directory")
    r.add_argument("--shared-sft", action="store_true", help="one cold start (on seed 0's training problems) "
                   "for every seed; the seeds then differ in RL's problems, sampling and initialisation order")
    r.add_argument("--lr", type=float, default=1e-5)
    r.add_argument("--filter", action="store_true", help="problem_filter: intermediate (a difficulty pre-pass)")
    r.add_argument("--eval-temperature", type=float, default=0.7)
    r.add_argument("--max-turns", type=int, default=2)
    r.add_argument("--max-new-tokens-long", type=int, default=96)
    r.add_argument("--max-new-tokens-short", type=int, default=32)
    r.add_argument("--length-budget", type=int, default=256)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(header())
    out = Path(args.out or tempfile.mkdtemp(prefix=f"rl_learning-{args.check}-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = run_sanity(args, out) if args.check == "sanity" else run_real(args, out)
    wall = time.time() - started
    print(f"\ntotal wall {wall:.0f} s; run dir {out}; load average at the end {load()}")
    (out / f"rl_learning_{args.check}.json").write_text(json.dumps({"args": vars(args), "wall_s": wall, **result},
                                                                     indent=2))


if __name__ == "__main__":
    main()
