"""The RL rewards as the rollout runs them: `RolloutScorer` (reward functions called once per
dialogue inside the rollout, so dynamic sampling sees each group's rewards, and readers of the
same names handed to TRL) and `reward_functions` (the default rewards, correctness also logging
accuracy)."""

from __future__ import annotations

import math
from typing import Any

from longshort.errors import LongshortError
from longshort.training import rewards as R


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_TRL_KEYS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")


class RolloutScorer:
    """The trainer's reward functions, run once per dialogue inside the rollout.

    Dynamic sampling must know every group's rewards before TRL sees the batch, so the rollout
    calls the reward functions itself, with the keyword arguments TRL would pass them (the
    decoded ``completions``, ``completion_ids``, the problem's ``answer``/``choices``/``id``, the
    rollout's extra fields, ``trainer_state``), and returns the values as the extra field
    ``reward_parts``. The trainer is given `readers()`: functions of the same names (so TRL logs
    ``rewards/<name>/mean`` as before) that return those values, so TRL's advantages are computed
    on exactly the rewards the selection saw. `metrics` maps a reward's name to a metric logged as
    its batch mean (``correctness_reward`` -> ``accuracy``)."""

    def __init__(self, funcs: list, weights: list[float] | None = None, *, metrics: dict[str, str] | None = None):
        self.funcs = list(funcs)
        self.names = [getattr(f, "__name__", type(f).__name__) for f in self.funcs]
        self.weights = [1.0] * len(self.funcs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.funcs):
            raise LongshortError(f"{len(self.weights)} reward weights for {len(self.funcs)} reward functions")
        self.metrics = dict(metrics or {})

    def score(self, out: dict[str, list], rows: list[dict[str, Any]], tokenizer: Any, *,
              trainer_state: Any = None) -> list[list[Any]]:
        """Per dialogue, the value of each reward function (None where a function abstains)."""
        ids = out["completion_ids"]
        kwargs = {k: v for k, v in out.items() if k not in _TRL_KEYS and k != "reward_parts"}
        kwargs.update(answer=[str(r["answer"]) for r in rows], choices=[r.get("choices") for r in rows],
                      id=[str(r.get("id")) for r in rows])
        completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
        columns = []
        for f, name in zip(self.funcs, self.names, strict=True):
            values = list(f(prompts=[r["problem"] for r in rows], completions=completions, completion_ids=ids,
                            trainer_state=trainer_state, log_extra=_ignore, log_metric=_ignore, **kwargs))
            if len(values) != len(ids):
                raise LongshortError(f"reward '{name}' returned {len(values)} values for {len(ids)} dialogues")
            columns.append(values)
        return [list(v) for v in zip(*columns, strict=True)] if columns else [[] for _ in ids]

    def total(self, parts: list[Any]) -> float | None:
        """The weighted sum GRPO normalises (None-valued parts left out, as TRL's nansum does)."""
        vals = [w * float(v) for w, v in zip(self.weights, parts, strict=True)
                if v is not None and not math.isnan(float(v))]
        return sum(vals) if vals else None

    def has_signal(self, group_parts: list[list[Any]]) -> bool:
        """A group carries signal when its total rewards are not all equal (a non-zero advantage)."""
        totals = [t for t in (self.total(p) for p in group_parts) if t is not None]
        return len(totals) > 1 and max(totals) - min(totals) > 1e-6

    def readers(self) -> list:
        """The reward functions the trainer calls: they return the values the rollout computed."""
        return [_reader(j, name, self.metrics.get(name)) for j, name in enumerate(self.names)]


def _reader(index: int, name: str, metric: str | None):
    def read(completions, reward_parts=None, log_metric=None, **kwargs):
        if reward_parts is None:
            raise LongshortError(f"reward '{name}' reads the rollout's `reward_parts`, which are missing")
        values = [parts[index] for parts in reward_parts]
        known = [float(v) for v in values if v is not None]
        if metric and log_metric is not None and known:
            log_metric(metric, sum(known) / len(known))
        return values

    read.__name__ = name
    return read


def reward_functions(config: R.RewardConfig) -> list:
    """The rewards of `rewards.reward_functions`, the correctness one also logging accuracy."""
    correctness, fmt, length = R.reward_functions(config)

    def correctness_reward(completions, **kwargs):
        values = correctness(completions, **kwargs)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and values:
            log_metric("accuracy", sum(values) / len(values))
        return values

    def format_reward(completions, **kwargs):
        return fmt(completions, **kwargs)

    def length_reward(completions, **kwargs):
        return length(completions, **kwargs)

    return [correctness_reward, format_reward, length_reward]
