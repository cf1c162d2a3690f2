"""The planted-importance task: arithmetic word problems with R1-style traces of known structure.

Each generated record is a long-CoT trace `{id, problem, answer, solution, response}` (the same
format as real traces, so every stage runs on it unchanged) plus the ground truth that real
traces lack:

- `gold_thoughts`: the true thoughts `{start, end, type, category, kind, essential}` with
  1-based inclusive step ranges over the paragraphs of the thinking text;
- `essential`: True only for the computations the answer needs; the re-verifications, the
  abandoned alternative and the hesitations are `kind="redundant"`; understanding, planning
  and the conclusion are `kind="neutral"` (restating or announcing, not computing).

This lets chunking (boundary F1) and Monte Carlo importance (AUROC essential vs redundant) be
measured against truth (`thoughts.quality`). The problems are multi-step arithmetic with small
numbers so that a 135M model can learn them after fine-tuning. Knobs: `num_ops` (computations
per problem), `max_operand` (operand size), `redundancy` (how many redundant thoughts).

>>> recs = generate(2, seed=1)
>>> recs == generate(2, seed=1), recs[0]["answer"].isdigit()
(True, True)
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.thoughts.steps import split_steps

NAMES = [("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"), ("Zoe", "she"),
         ("Ben", "he"), ("Ivy", "she"), ("Max", "he"), ("Lily", "she"), ("Omar", "he")]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards"]


class SynthConfig(BaseModel):
    """Knobs of the planted-importance arithmetic task."""

    task: Literal["arithmetic"] = Field("arithmetic", description="Task family; only 'arithmetic' "
                                        "exists (exact integer answers, small numbers).")
    num_ops: int = Field(3, ge=1, le=8, description="Computations per problem; 3 keeps traces "
                         "short enough for a 135M model while needing several essential thoughts.")
    max_operand: int = Field(12, ge=2, le=1000, description="Largest operand; 12 keeps the "
                             "arithmetic within what a small model can learn.")
    redundancy: int = Field(3, ge=0, le=8, description="Redundant thoughts per trace (re-checks, "
                            "an abandoned alternative, hesitations); 3 gives a mix of both labels.")
    noise: float = Field(0.3, ge=0.0, le=1.0, description="Style noise: the chance that a thought "
                         "is written without its usual discourse marker, and (half as often) that a "
                         "computation holds an in-line 'Wait, …' aside; 0.3 so that boundaries are not "
                         "recoverable by marker matching alone, as in real traces.")
    vary_ops: bool = Field(True, description="Draw num_ops from 1..num_ops+1 per problem, so "
                           "traces differ in length (a difficulty spread, not one fixed size).")


def _ops(rng: random.Random, cfg: SynthConfig, n: int) -> tuple[int, list[dict[str, Any]]]:
    """Draw a start value and n operations keeping every intermediate value a positive integer."""
    m = cfg.max_operand
    value = rng.randint(2, m)
    start = value
    ops: list[dict[str, Any]] = []
    for _ in range(n):
        kinds = ["add", "sub", "bags"]
        if value > 1 and any(value % k == 0 for k in (2, 3, 4)):
            kinds.append("share")
        kind = rng.choice(kinds)
        if kind == "sub" and value <= 1:
            kind = "add"
        if kind == "add":
            x = rng.randint(1, m)
            new = value + x
            op = {"kind": kind, "x": x}
        elif kind == "sub":
            x = rng.randint(1, value - 1)
            new = value - x
            op = {"kind": kind, "x": x}
        elif kind == "bags":
            b, c = rng.randint(2, min(5, m)), rng.randint(2, min(6, m))
            new = value + b * c
            op = {"kind": kind, "b": b, "c": c, "x": b * c}
        else:
            k = rng.choice([k for k in (2, 3, 4) if value % k == 0])
            new = value // k
            op = {"kind": kind, "k": k}
        op.update(before=value, after=new)
        ops.append(op)
        value = new
    return start, ops


def _sentence(op: dict[str, Any], name: str, pron: str, item: str) -> str:
    k = op["kind"]
    if k == "add":
        return f"{pron.capitalize()} finds {op['x']} more {item}."
    if k == "sub":
        return f"{pron.capitalize()} gives {op['x']} {item} to a friend."
    if k == "bags":
        return f"{pron.capitalize()} buys {op['b']} bags with {op['c']} {item} in each bag."
    return f"{pron.capitalize()} shares all of them equally among {op['k']} friends, keeping only one share."


def _unmarked(rng: random.Random, noise: float) -> bool:
    """Whether this thought is written without its usual discourse marker (style noise)."""
    return noise > 0 and rng.random() < noise


def _compute_steps(rng: random.Random, op: dict[str, Any], idx: int, n: int, pron: str, item: str,
                   noise: float = 0.0) -> list[str]:
    lead = ["First,", "Next,", "Then,", "After that,", "Now,"]
    marker = "First," if idx == 0 else ("Finally," if idx == n - 1 and n > 2 else rng.choice(lead[1:]))
    if idx > 0 and _unmarked(rng, noise):
        marker = ""
    b, a = op["before"], op["after"]
    k = op["kind"]
    if k == "add":
        main = f"{marker} {pron} finds {op['x']} more {item}. So {b} + {op['x']} = {a}."
    elif k == "sub":
        main = f"{marker} {pron} gives away {op['x']} {item}. So {b} - {op['x']} = {a}."
    elif k == "bags":
        main = (f"{marker} the bags: {op['b']} bags with {op['c']} each is {op['b']} * {op['c']} = "
                f"{op['x']} {item}. Adding them, {b} + {op['x']} = {a}.")
    else:
        main = f"{marker} {pron} shares {b} {item} among {op['k']} friends, so each share is {b} / {op['k']} = {a}."
    main = main.strip()
    main = main[0].upper() + main[1:]
    steps = [main]
    if noise > 0 and rng.random() < noise / 2:
        # an in-line self-check that belongs to the computation (a marker inside a thought)
        steps.append(rng.choice([f"Wait, is that really {a}? Yes, {a}.", f"Hmm, {a}. That looks right."]))
    if rng.random() < 0.5:
        steps.append(rng.choice([f"So now {pron} has {a} {item}.", f"That leaves {a} {item}.",
                                 f"So the count is {a} at this point."]))
    return steps


def _recheck_steps(rng: random.Random, op: dict[str, Any], item: str, noise: float = 0.0) -> list[str]:
    b, a = op["before"], op["after"]
    expr = {"add": f"{b} + {op.get('x')}", "sub": f"{b} - {op.get('x')}",
            "bags": f"{b} + {op.get('b')} * {op.get('c')}", "share": f"{b} / {op.get('k')}"}[op["kind"]]
    opener = rng.choice(["Wait, let me double-check that.", "Let me verify this step.",
                         "Hmm, let me check that again.", "Wait, let me make sure that's right."])
    if _unmarked(rng, noise):
        opener = rng.choice(["Going over that step again:", "To be safe, I redo it:", "Recomputing that one:"])
    steps = [f"{opener} {expr} gives {a}."]
    steps.append(rng.choice([f"Yes, {a} is correct.", f"Okay, that matches: {a} {item}.",
                             f"Right, {a}."]))
    return steps


def _alternative_steps(rng: random.Random, item: str, noise: float = 0.0) -> list[str]:
    unmarked = _unmarked(rng, noise)
    first = rng.choice([
        f"Maybe I could add up all the changes first and apply them to the {item} at the end.",
        "I could also try to write one big expression for the whole story.",
    ]) if unmarked else rng.choice([
        f"Alternatively, maybe I could add up all the changes first and apply them to the {item} at the end.",
        "Alternatively, I could try to write one big expression for the whole story.",
        "Another approach might be to work backwards from the end.",
    ])
    second = rng.choice([
        "Hmm, that gets confusing because the order of the events matters here. I'll stick with going step by step.",
        "But that seems more complicated than needed. Let me go back to the step-by-step approach.",
    ])
    return [first, second]


def _hesitation_steps(rng: random.Random, op: dict[str, Any], pron: str, item: str,
                      noise: float = 0.0) -> list[str]:
    detail = {"add": f"{op.get('x')} more", "sub": f"{op.get('x')} away",
              "bags": f"{op.get('b')} bags of {op.get('c')}", "share": f"{op.get('k')} friends"}[op["kind"]]
    if _unmarked(rng, noise):
        return [rng.choice([f"Did the problem say {detail}? Let me look at it again.",
                            f"I want to be sure I read {detail} correctly."]),
                rng.choice(["Yes, that's what it says.", "Okay, I read it right."])]
    return [rng.choice([f"Hmm, wait. Did the problem say {detail}? Let me look at it again.",
                        f"Hold on, I want to be sure I read {detail} correctly.",
                        f"Hmm, is it really {detail}? Let me reread that part."]),
            rng.choice(["Yes, that's what it says.", "Okay, I read it right.", "Good, that's correct."])]


def _final_check_steps(rng: random.Random, start: int, ops: list[dict[str, Any]]) -> list[str]:
    chain = ", ".join(str(op["after"]) for op in ops)
    return [rng.choice(["Let me verify the whole thing once more.", "Let me double-check everything from the start."])
            + f" Starting from {start}, the counts go {chain}.",
            f"Everything is consistent, so the end result is {ops[-1]['after']}."]


def make_problem(rng: random.Random, cfg: SynthConfig, index: int, id_prefix: str = "synth-"
                 ) -> dict[str, Any]:
    """One problem with its trace and ground truth (see the module docstring)."""
    n = rng.randint(1, cfg.num_ops + 1) if cfg.vary_ops else cfg.num_ops
    n = max(1, min(n, 8))
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    start, ops = _ops(rng, cfg, n)
    answer = ops[-1]["after"]
    story = " ".join(_sentence(op, name, pron, item) for op in ops)
    problem = f"{name} has {start} {item}. {story} How many {item} does {name} have now?"

    thoughts: list[tuple[str, str, str, list[str]]] = []  # (type, category, kind, steps)
    thoughts.append(("problem understanding", "understanding", "neutral", [
        rng.choice([f"Okay, so I need to figure out how many {item} {name} has at the end.",
                    f"Alright, let me understand the problem. {name} starts with some {item} and a few things happen."]),
        f"{name} starts with {start} {item}, and then there " + ("is 1 change" if n == 1 else f"are {n} changes") + " to keep track of."]))
    thoughts.append(("planning", "planning", "neutral", [rng.choice([
        f"My plan is to go through the changes one at a time and keep a running count of the {item}.",
        "I'll handle each event in order and update the count after each one.",
    ])]))
    body: list[tuple[str, str, str, list[str]]] = []
    redundant_after: dict[int, list[tuple[str, str, str, list[str]]]] = {}
    kinds = ["recheck", "hesitation", "alternative", "final_check"]
    picks: list[str] = []
    for r in range(cfg.redundancy):
        picks.append(kinds[r] if r < len(kinds) else rng.choice(kinds[:3]))
    for kind in picks:
        pos = rng.randrange(n)
        if kind == "recheck":
            th = ("re-verification", "verification", "redundant", _recheck_steps(rng, ops[pos], item, cfg.noise))
        elif kind == "hesitation":
            th = ("hesitation", "other", "redundant", _hesitation_steps(rng, ops[pos], pron, item, cfg.noise))
        elif kind == "alternative":
            th = ("abandoned alternative", "alternative", "redundant", _alternative_steps(rng, item, cfg.noise))
        else:
            pos = n - 1
            th = ("final re-verification", "verification", "redundant", _final_check_steps(rng, start, ops))
        redundant_after.setdefault(pos, []).append(th)
    for i, op in enumerate(ops):
        body.append(("computation", "computation", "essential", _compute_steps(rng, op, i, n, pron, item, cfg.noise)))
        extra = redundant_after.get(i, [])
        # the whole-trace re-check goes last, after any other redundant thought
        extra.sort(key=lambda t: t[0] == "final re-verification")
        body.extend(extra)
    thoughts.extend(body)
    thoughts.append(("conclusion", "conclusion", "neutral", [
        rng.choice([f"So the answer is {answer}.", f"Therefore, {name} has {answer} {item} now."]),
        f"**Final Answer**\n\\boxed{{{answer}}}"]))

    steps: list[str] = []
    gold: list[dict[str, Any]] = []
    for typ, cat, kind, th_steps in thoughts:
        s = len(steps) + 1
        steps.extend(th_steps)
        gold.append({"start": s, "end": len(steps), "type": typ, "category": cat, "kind": kind,
                     "essential": kind == "essential"})
    thinking = "\n\n".join(steps)
    final = (f"{name} starts with {start} {item}. " + " ".join(
        f"{op['before']} → {op['after']}." for op in ops) + f"\n\nThe answer is \\boxed{{{answer}}}.")
    response = f"<think>\n{thinking}\n</think>\n\n{final}"
    solution = " ".join(f"{op['before']} → {op['after']}" for op in ops) + f". Answer: {answer}."
    assert split_steps(response).steps == steps, "synthetic steps must survive step splitting"
    return {"id": f"{id_prefix}{index:05d}", "problem": problem, "answer": str(answer),
            "solution": solution, "response": response, "gold_thoughts": gold,
            "task": cfg.task, "difficulty": {"num_ops": n, "max_operand": cfg.max_operand,
                                             "redundancy": cfg.redundancy}}


def generate(n: int, *, seed: int = 0, config: SynthConfig | None = None, id_prefix: str = "synth-"
             ) -> list[dict[str, Any]]:
    """`n` planted-importance records, deterministic in (`seed`, `config`)."""
    cfg = config or SynthConfig()
    rng = random.Random(f"{cfg.task}-{seed}")
    return [make_problem(rng, cfg, i, id_prefix) for i in range(n)]
