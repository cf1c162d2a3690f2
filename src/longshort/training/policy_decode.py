"""Sampling one turn from the policy being trained, on exactly the token ids the loss sees.

`policy_generate` is RL's small decoding loop (left-padded batch, KV cache, stop strings, EOS);
tokens are drawn by the engine's sampler (`engines.hf.sample_tokens`), seeded from torch's global
generator so the trainer's seed fixes the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longshort.engines.hf import sample_tokens
from longshort.engines.probe import cache_kwarg


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
    """Sample one turn for each token sequence (left-padded batch, KV cache), stopping a row at
    EOS, at the first stop string, or after `max_new_tokens`. Logprobs are those of the
    sampling distribution (logits / temperature), as TRL computes them for the loss."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is not None:
            eos.update(src if isinstance(src, (list, tuple)) else [src])
    cache_kw = cache_kwarg(model)
    B, L = len(sequences), max(len(s) for s in sequences)
    # The engine's sampler (one home for sampling): counter-based uniforms per row, seeded from
    # torch's global generator so that `torch.manual_seed` (the trainer's seed) fixes the rollout.
    seeds = torch.randint(0, 2**62, (B,), dtype=torch.int64)
    temps = torch.full((B,), float(temperature))
    top_ps = torch.full((B,), float(top_p))
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, L - len(s):] = torch.tensor(s)
        mask[i, L - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    window = 4 * max((len(s) for s in stops), default=0) + 8
    toks: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    out: list[PolicyTurn | None] = [None] * B
    specials = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)

    def clean(text: str) -> str:
        for s in specials:
            text = text.replace(s, "")
        return text

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           logits_to_keep=1, **{cache_kw: cache}).logits[:, -1, :].float()
            last = pos[:, -1]
            for step in range(max_new_tokens):
                nxt, lp = sample_tokens(logits, temps.to(logits.device), top_ps.to(logits.device),
                                        seeds.to(logits.device), step, want_logprobs=True)
                for r, (t, p) in enumerate(zip(nxt.tolist(), lp.tolist(), strict=True)):
                    if out[r] is not None:
                        continue
                    toks[r].append(t)
                    lps[r].append(p)
                    done = None
                    if t in eos:
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        done = PolicyTurn(toks[r], lps[r], decoded,
                                          clean(tokenizer.decode(toks[r][:-1], skip_special_tokens=False)),
                                          None, "stop")
                    elif stops and any(s in tokenizer.decode(toks[r][-window:], skip_special_tokens=False)
                                       for s in stops):
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        at, hit = min((decoded.find(s), s) for s in stops if s in decoded)
                        done = PolicyTurn(toks[r], lps[r], decoded, clean(decoded[:at]), hit, "stop")
                    elif step + 1 >= max_new_tokens:
                        decoded = tokenizer.decode(toks[r], skip_special_tokens=False)
                        done = PolicyTurn(toks[r], lps[r], decoded, clean(decoded), None, "length")
                    out[r] = done
                if all(o is not None for o in out):
                    break
                mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
                last = last + 1
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                               use_cache=True, **{cache_kw: cache}).logits[:, -1, :].float()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
