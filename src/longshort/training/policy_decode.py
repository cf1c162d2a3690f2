"""Sampling one turn from the policy being trained, on exactly the token ids the loss sees.

`policy_generate` hands the sequences to the engine's decode loop (`engines.hf.HFEngine`, the one
decode loop in the source: batching under a token budget, KV cache, stop strings, EOS, the
counter-based sampler) as `prompt_token_ids` requests with logprobs on. Each request's seed is
drawn from torch's global generator, so the trainer's seed fixes the rollout. The policy keeps
the dynamic cache (`fast_path="off"`): its weights change every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longshort.engines.base import GenerationRequest, SamplingParams
from longshort.engines.hf import HFEngine


@dataclass
class PolicyTurn:
    """One turn sampled from the policy: its tokens (all kept in the sequence), their sampling
    logprobs, the decoded text, the text before the stop, the stop hit and the finish reason."""

    token_ids: list[int]
    logprobs: list[float]
    decoded: str
    text: str
    stop: str | None
    finish_reason: str


def policy_generate(model: Any, tokenizer: Any, sequences: list[list[int]], *, max_new_tokens: int,
                    stops: list[str], temperature: float = 1.0, top_p: float = 1.0) -> list[PolicyTurn]:
    """Sample one turn for each token sequence, stopping a row at EOS, at the first stop string,
    or after `max_new_tokens`. Logprobs are those of the sampling distribution (logits /
    temperature), as TRL computes them for the loss."""
    engine = HFEngine.from_model(model, tokenizer, fast_path="off")
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            stop=list(stops), logprobs=True)
    results = engine.generate([GenerationRequest(prompt_token_ids=list(s), params=params) for s in sequences])
    turns = []
    for res in results:
        c = res.completions[0]
        ids = list(c.token_ids or [])
        turns.append(PolicyTurn(ids, list(c.logprobs or []), tokenizer.decode(ids, skip_special_tokens=False),
                                c.text, c.stop, c.finish_reason))
    return turns
