"""What a request's sampling fields mean for the solver and for one engine call.

`pair_config` is the one place that decides what `max_tokens` means for the pair: a **per-turn**
limit, never above the server's per-role limits. `single_params` does the same for one model
(`max_tokens` per choice). Both are pure functions, testable without a server.
"""

from __future__ import annotations

from typing import Any

from longshort.dialogue.collab import CollabConfig
from longshort.dialogue.protocol import Turn
from longshort.engines.base import SamplingParams


def pair_config(base: CollabConfig, *, max_tokens: int | None = None, temperature: float | None = None,
                top_p: float | None = None, seed: int | None = None) -> CollabConfig:
    """The solver settings for one pair request: the server's `base` with the request's fields.

    `max_tokens` caps every turn of both roles (the server's own per-role limits stay the
    ceiling); temperature, top_p and seed replace the server's when given. One dialogue per
    request (`samples` = 1).

    >>> base = CollabConfig(max_new_tokens_long=1024, max_new_tokens_short=512)
    >>> cfg = pair_config(base, max_tokens=600)
    >>> cfg.max_new_tokens_long, cfg.max_new_tokens_short
    (600, 512)
    >>> pair_config(base).max_new_tokens_long, pair_config(base, seed=3).seed
    (1024, 3)
    """
    update: dict[str, Any] = {"samples": 1}
    if max_tokens is not None:
        update["max_new_tokens_long"] = min(base.max_new_tokens_long, max_tokens)
        update["max_new_tokens_short"] = min(base.max_new_tokens_short, max_tokens)
    for name, value in (("temperature", temperature), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            update[name] = value
    return base.model_copy(update=update)


def single_params(base: CollabConfig, role: str, *, max_tokens: int | None, ceiling: int,
                  temperature: float | None = None, top_p: float | None = None, stop: list[str] | None = None,
                  n: int = 1, seed: int | None = None, logprobs: bool = False) -> SamplingParams:
    """Sampling parameters of a plain single-model request to `role`.

    `max_tokens` is per choice; unset, it is the role's per-turn limit of `base`; never above
    `ceiling` (the server's `max_tokens_limit`). Unset temperature / top_p are 1.0, as OpenAI's.

    >>> single_params(CollabConfig(max_new_tokens_short=512), "short", max_tokens=None, ceiling=256).max_new_tokens
    256
    """
    default_max = base.max_new_tokens_long if role == "long" else base.max_new_tokens_short
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_new_tokens=min(max_tokens or default_max, ceiling),
        stop=list(stop or []), n=n, seed=seed, logprobs=bool(logprobs))


def dialogue_budget(cfg: CollabConfig) -> int:
    """Most tokens one dialogue may generate: max_turns long turns and as many short ones.

    >>> dialogue_budget(CollabConfig(max_turns=4, max_new_tokens_long=1024, max_new_tokens_short=512))
    6144
    """
    return cfg.max_turns * (cfg.max_new_tokens_long + cfg.max_new_tokens_short)


def single_budget(params: SamplingParams) -> int:
    """Most tokens one single-model request may generate: n x max_tokens.

    >>> single_budget(SamplingParams(n=8, max_new_tokens=4096))
    32768
    """
    return params.n * params.max_new_tokens


def answer_text(record: dict[str, Any]) -> str:
    """The reply content of a dialogue: its last turn without the protocol's tags.

    >>> answer_text({"turns": [{"role": "short", "text": "<answer> so \\\\boxed{4} </answer>"}]})
    'so \\\\boxed{4}'
    """
    turns = record.get("turns") or []
    if not turns:
        return ""
    last = Turn.from_dict(turns[-1])
    try:
        return last.body.strip()
    except ValueError:  # not a valid turn (records from the solver always are): the text as is
        return last.text.strip()
