"""Learning check of the multi-turn RL stage (not a test): does GRPO raise the reward?

Trains one role of the embedded SmolLM2-135M pair (default: the long role, the partner is the
same frozen model) for a few dozen GRPO steps on easy synthetic arithmetic problems
(`longshort.thoughts.synthetic`, one operation each), then prints, side by side with ratios:

- the training curve: mean reward parts, accuracy and tokens per role over the first and the
  last `--window` steps (from the trainer's own logs);
- a fixed evaluation before and after: the same held-out problems, the same seeds, played
  with the initial and with the trained policy against the same partner.

Run: ``.venv/bin/python benchmarks/rl_learning.py`` (about 10-15 min on 2 shared CPU cores with
the defaults; ``--steps 6 --eval-problems 4`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def make_problems(n: int, seed: int) -> list[dict]:
    from longshort.thoughts.synthetic import SynthConfig, generate

    cfg = SynthConfig(num_ops=1, max_operand=9, redundancy=0, vary_ops=False)
    return [{"id": r["id"], "problem": r["problem"], "answer": r["answer"], "solution": r["solution"]}
            for r in generate(n, seed=seed, config=cfg, id_prefix=f"s{seed}-")]


def sft_warm_start(model: str, problems: list[dict], out: Path, *, steps: int, lr: float) -> dict[str, str]:
    """A few SFT steps per role on templated turns (long: the computation in <think>, short: the
    boxed answer), so that the RL stage starts from a pair that follows the protocol, as in the
    real pipeline (coldstart SFT, then RL). Returns the two model directories."""
    from longshort.dialogue.protocol import render_input
    from longshort.training.sft import SFTRunConfig, run_sft

    dirs = {}
    for role in ("long", "short"):
        recs = []
        for p in problems:
            long_turn = "<think>\n" + p["solution"].split("Answer:")[0].strip() + "\n</think>"
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
                                          max_steps=steps, batch_size=4, lr=lr, warmup=0, save_steps=10**6,
                                          report_to="none", resume=True, max_length=512))
    return dirs


def evaluate(policy_spec: str, partner, role: str, problems: list[dict], dialogue, *, samples: int, seed: int,
             temperature: float) -> dict[str, float]:
    """Play every problem `samples` times with `policy_spec` as `role`; mean rewards and tokens."""
    import torch

    from longshort.models import load_model
    from longshort.training import rewards as R
    from longshort.training.rl import DialogueRollout

    model, tok = load_model(policy_spec, device="cpu")
    rollout = DialogueRollout(role, partner, dialogue, temperature=temperature)
    questions = [p["problem"] for p in problems for _ in range(samples)]
    answers = [p["answer"] for p in problems for _ in range(samples)]
    torch.manual_seed(seed)
    out = rollout.play(questions, model, tok)
    kw = dict(answer=answers, **{k: out[k] for k in ("final_answer", "turns", "trained_role", "dialogue_tokens",
                                                     "role_tokens")})
    cfg = R.RewardConfig()
    parts = {name: f([""] * len(questions), **kw) for name, f in zip(("correctness", "format", "length"),
                                                                     R.reward_functions(cfg), strict=True)}
    total = [sum(w * parts[n][i] for w, n in zip(cfg.weights(), parts, strict=True)) for i in range(len(questions))]
    mean = statistics.fmean
    return {"reward": mean(total), "accuracy": mean(parts["correctness"]), "format": mean(parts["format"]),
            "length": mean(parts["length"]), "tokens_long": mean(out["tokens_long"]),
            "tokens_short": mean(out["tokens_short"]), "turns": mean(out["num_turns"]),
            "finished": mean(float(x) for x in out["finished"])}


def curve(log_history: list[dict], window: int) -> tuple[dict, dict]:
    keys = {"reward": "reward", "accuracy": "accuracy", "correctness": "rewards/correctness_reward/mean",
            "format": "rewards/format_reward/mean", "length": "rewards/length_reward/mean",
            "tokens_long": "dialogue/tokens_long", "tokens_short": "dialogue/tokens_short", "turns": "dialogue/turns"}
    steps = [h for h in log_history if "reward" in h]

    def avg(rows):
        return {k: statistics.fmean(r[v] for r in rows if r.get(v) is not None) if rows else float("nan")
                for k, v in keys.items()}

    return avg(steps[:window]), avg(steps[-window:])


def table(title: str, start: dict, end: dict) -> None:
    print(f"\n{title}")
    print(f"  {'metric':<14}{'start':>10}{'end':>10}{'end/start':>11}")
    for k in start:
        s, e = start[k], end[k]
        ratio = f"{e / s:.2f}" if s else ("inf" if e else "-")
        print(f"  {k:<14}{s:>10.3f}{e:>10.3f}{ratio:>11}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model of both roles (the partner stays frozen)")
    ap.add_argument("--role", default="long", choices=["long", "short"], help="role to train")
    ap.add_argument("--steps", type=int, default=30, help="GRPO steps")
    ap.add_argument("--problems", type=int, default=48, help="training problems")
    ap.add_argument("--eval-problems", type=int, default=8, help="held-out problems for before/after")
    ap.add_argument("--eval-samples", type=int, default=2, help="dialogues per held-out problem")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8, help="dialogues per step")
    ap.add_argument("--lr", type=float, default=1e-5, help="higher than the 1e-6 default: few steps, small model")
    ap.add_argument("--max-new-tokens-long", type=int, default=48)
    ap.add_argument("--max-new-tokens-short", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=1)
    ap.add_argument("--sft-steps", type=int, default=0, help="SFT warm start steps per role before RL (0 = none: "
                    "the raw model, which rarely follows the protocol)")
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--window", type=int, default=5, help="steps averaged at the start and at the end")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    ap.add_argument("--out", default=None, help="run directory (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from longshort.dialogue.collab import CollabConfig
    from longshort.engines.hf import HFEngine
    from longshort.training.rl import RLRunConfig, run_rl

    out = Path(args.out or tempfile.mkdtemp(prefix="rl_learning-"))
    out.mkdir(parents=True, exist_ok=True)
    train_problems = make_problems(args.problems, args.seed)
    data = out / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in train_problems))
    specs = {"long": args.model, "short": args.model}
    t_sft = 0.0
    if args.sft_steps:
        t0 = time.time()
        specs = sft_warm_start(args.model, train_problems, out, steps=args.sft_steps, lr=args.sft_lr)
        t_sft = time.time() - t0
        print(f"SFT warm start: {args.sft_steps} steps per role in {t_sft:.0f} s")
    held_out = make_problems(args.eval_problems, args.seed + 1000)
    dialogue = CollabConfig(max_turns=args.max_turns, max_new_tokens_long=args.max_new_tokens_long,
                            max_new_tokens_short=args.max_new_tokens_short)
    cfg = RLRunConfig(long=specs["long"], short=specs["short"], data=str(data), out=str(out / "rl"), iterations=1,
                      first=args.role, max_steps=args.steps, num_generations=args.num_generations,
                      batch_size=args.batch_size, lr=args.lr, dialogue=dialogue, report_to="tensorboard",
                      save_steps=10**6, logging_steps=1, seed=args.seed, resume=True)
    other = "short" if args.role == "long" else "long"
    partner = HFEngine(specs[other], device="cpu")
    print(f"model {args.model}, training the {args.role} role for {args.steps} GRPO steps "
          f"({args.batch_size} dialogues/step, {args.num_generations} per problem), torch threads {args.threads}")
    t0 = time.time()
    before = evaluate(specs[args.role], partner, args.role, held_out, dialogue, samples=args.eval_samples, seed=123,
                      temperature=1.0)
    t_eval = time.time() - t0
    t0 = time.time()
    run_rl(cfg)
    t_train = time.time() - t0
    trained = str(out / "rl" / f"iter0_{args.role}")
    after = evaluate(trained, partner, args.role, held_out, dialogue, samples=args.eval_samples, seed=123,
                     temperature=1.0)
    history = json.loads((Path(trained) / "metrics.json").read_text())["log_history"]
    first, last = curve(history, args.window)
    table(f"training curve: mean of the first vs the last {args.window} steps", first, last)
    table(f"held-out evaluation ({args.eval_problems} problems x {args.eval_samples}, same seeds): "
          "initial vs trained policy", before, after)
    print(f"\nwall: training {t_train:.0f} s ({t_train / args.steps:.1f} s/step), one evaluation {t_eval:.0f} s; "
          f"run dir {out}")
    rose = last["reward"] > first["reward"], after["reward"] > before["reward"]
    print(f"reward rose: training curve {'yes' if rose[0] else 'no'}, held-out {'yes' if rose[1] else 'no'}")
    (out / "rl_learning.json").write_text(json.dumps({"args": vars(args), "curve_start": first, "curve_end": last,
                                                      "eval_before": before, "eval_after": after,
                                                      "train_s": t_train, "sft_s": t_sft}, indent=2))


if __name__ == "__main__":
    main()
