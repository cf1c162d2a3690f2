"""RL's problems: loading and checking the problems file, the GRPO dataset, and the difficulty
pre-pass (`solve_rates` under the starting pair, `keep_intermediate`)."""

from __future__ import annotations

import random
from typing import Any

from longshort.errors import InputError
from longshort.io import ensure_ids, read_jsonl
from longshort.training import rewards as R
from longshort.training.rollout import DialogueRollout


def load_problems(path: str, *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Problems for RL: ``{id, problem, answer, choices?}``; `InputError` on bad or no records."""
    recs = read_jsonl(path, required=["problem", "answer"], skip_bad=skip_bad)
    if not recs:
        raise InputError("no problems (empty file)", path=path)
    for i, rec in enumerate(recs, start=1):
        if not isinstance(rec["problem"], str):
            raise InputError("expected a string", path=path, line=i, field="problem")
        ch = rec.get("choices")
        if ch is not None and not (isinstance(ch, list) and all(isinstance(c, str) for c in ch)):
            raise InputError("expected a list of strings", path=path, line=i, field="choices")
    recs = ensure_ids(recs, prefix="p")
    seen: dict[str, tuple[int, str]] = {}
    for i, rec in enumerate(recs, start=1):  # the rollout finds a problem's gold answer by its text
        first = seen.setdefault(rec["problem"], (i, str(rec["answer"])))
        if first[1] != str(rec["answer"]):
            raise InputError(f"the same problem text as line {first[0]} with another answer", path=path, line=i,
                             field="answer")
    return recs


def problems_dataset(problems: list[dict[str, Any]]):
    """The GRPO dataset: ``prompt`` = the problem text (the rollout renders it per role),
    ``answer``/``choices``/``id`` for the rewards."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [p["problem"] for p in problems],
        "answer": [str(p["answer"]) for p in problems],
        "choices": [p.get("choices") for p in problems],
        "id": [str(p["id"]) for p in problems],
    })


def solve_rates(rollout: DialogueRollout, problems: list[dict[str, Any]], model: Any, tokenizer: Any, *,
                samples: int, batch_dialogues: int) -> dict[str, float]:
    """Each problem's solve rate under the rollout's pair: the share of `samples` dialogues whose
    committed answer (`protocol.committed_answer`) is right. Played `batch_dialogues` at a time."""
    per = max(1, batch_dialogues // samples)
    rates: dict[str, float] = {}
    for i in range(0, len(problems), per):
        chunk = problems[i:i + per]
        rows = [p for p in chunk for _ in range(samples)]
        out = rollout.play([p["problem"] for p in rows], model, tokenizer)
        right = R.correctness_reward([""] * len(rows), answer=[str(p["answer"]) for p in rows],
                                     final_answer=out["final_answer"], choices=[p.get("choices") for p in rows])
        for j, p in enumerate(chunk):
            rates[str(p["id"])] = sum(right[j * samples:(j + 1) * samples]) / samples
    return rates


def keep_intermediate(problems: list[dict[str, Any]], rates: dict[str, float], *, minimum: int,
                      seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The problems whose solve rate is strictly between 0 and 1; if fewer than `minimum` (one
    step's problems), topped up with others drawn at random (seeded), so a step can still form.

    >>> ps = [{"id": str(i)} for i in range(4)]
    >>> kept, counts = keep_intermediate(ps, {"0": 0.0, "1": 0.5, "2": 1.0, "3": 0.25}, minimum=1)
    >>> [p["id"] for p in kept], counts["unsolved"], counts["always_solved"]
    (['1', '3'], 1, 1)
    """
    mid = [p for p in problems if 0.0 < rates.get(str(p["id"]), 0.0) < 1.0]
    counts = {"problems": len(problems), "intermediate": len(mid),
              "unsolved": sum(rates.get(str(p["id"]), 0.0) == 0.0 for p in problems),
              "always_solved": sum(rates.get(str(p["id"]), 0.0) == 1.0 for p in problems), "topped_up": 0}
    if len(mid) < minimum:
        rest = [p for p in problems if p not in mid]
        random.Random(seed).shuffle(rest)
        extra = rest[:minimum - len(mid)]
        counts["topped_up"] = len(extra)
        chosen = {id(p) for p in mid + extra}
        mid = [p for p in problems if id(p) in chosen]
    counts["kept"] = len(mid)
    return mid, counts
