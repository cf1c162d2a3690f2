"""Forced-answer probes over a transformers causal LM: the log-probability of short target strings
after every prefix of a segmented text, with the text encoded once (the `forced` importance
estimator of DESIGN §5).

The text is `prompt + segments[0] + … + segments[n-1]`; boundary i (i = 0..n) is the end of
`prompt + segments[:i]`. At every boundary each *stem* (e.g. ``"\\n</think>\\n\\nThe final answer
is \\boxed{"``) is appended and, after it, each *target* (e.g. ``"18}"``) is scored:
``logprob[i][s][t] = log P(target_t | text up to boundary i + stem_s)`` under teacher forcing.

How it stays cheap (prefix i+1 extends prefix i):

1. The prompt and every segment are tokenised separately and concatenated, so boundary i is a
   token position and the token sequence of prefix i is a prefix of that of prefix i+1. The whole
   text goes through the model once (in chunks of `chunk_tokens`), filling a KV cache.
2. The probes are *branches* off that cache: for each (boundary, stem) a block holding the stem's
   tokens and, after them, every target's tokens but the last. Many blocks go through one forward
   pass together, appended after the cached text, with a custom 4D attention mask: a block token
   sees the text up to its boundary, the block's stem, and (for target tokens) the earlier tokens
   of its own target, nothing else; its position id continues from its boundary. After the pass
   the cache is cropped back to the text. Only the positions whose next token is scored go
   through the LM head (`logits_to_keep`).

So a trace of T tokens with n thoughts costs one forward pass over T tokens plus a few short
ones over (n+1) × stems × (stem + targets) tokens, instead of n+1 passes over up to T tokens.
`naive_logprobs` computes the same numbers the slow way (one full forward per probe); the tests
hold the two equal.

Tokenising pieces separately can differ from tokenising the joined text where a BPE merge would
cross a piece boundary (rare for byte-level BPE when pieces start with whitespace or punctuation);
the model then scores a valid but non-canonical tokenisation. Targets are tokenised on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Block:
    boundary: int            # token position of the boundary (length of the text prefix)
    row: int                 # index into the output rows (boundary index i)
    stem: int                # stem index
    tokens: list[int]        # stem tokens, then each target's tokens but its last
    # attention within the block: for each block token, the block-local indices it may see
    local: list[list[int]]
    # scoring: (target index, block-local position whose logits predict it, token id) per target token
    scored: list[tuple[int, int, int]]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def cache_kwarg(model: Any) -> str:
    """The forward keyword of the KV cache: 'cache' in newer transformers, else 'past_key_values'."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _encode_segments(tokenizer: Any, prompt_ids: list[int], segments: Sequence[str]) -> tuple[list[int], list[int]]:
    """The prompt's tokens then each segment's, encoded once; `bounds[i]` is where segment i
    starts (`bounds[-1]` the end)."""
    text = list(prompt_ids)
    bounds = [len(text)]
    for seg in segments:
        text.extend(_encode(tokenizer, seg))
        bounds.append(len(text))
    return text, bounds


def _block(boundary: int, row: int, s: int, stem: list[int], targets: list[list[int]]) -> _Block:
    tokens = list(stem)
    local = [list(range(k + 1)) for k in range(len(stem))]
    scored: list[tuple[int, int, int]] = []
    for t, tgt in enumerate(targets):
        prev = len(stem) - 1  # the stem's last token predicts the target's first
        own: list[int] = []
        for m, tok in enumerate(tgt):
            scored.append((t, prev, tok))
            if m == len(tgt) - 1:
                break
            pos = len(tokens)
            tokens.append(tok)
            own.append(pos)
            local.append(list(range(len(stem))) + list(own))
            prev = pos
    return _Block(boundary, row, s, tokens, local, scored)


def branch_logprobs(model: Any, tokenizer: Any, prompt: str, segments: Sequence[str], stems: Sequence[str],
                    targets: Sequence[str], *, max_context: int | None = None, chunk_tokens: int = 1024,
                    branch_tokens: int = 1024, cache_kw: str | None = None
                    ) -> list[list[list[float]] | None]:
    """``out[i][s][t]`` = log P(targets[t] | prompt + segments[:i] + stems[s]) for i = 0..n, or
    ``out[i] = None`` where that probe would not fit `max_context` tokens (see the module docstring).

    `chunk_tokens`: text tokens per forward pass when encoding the text; `branch_tokens`: probe
    tokens per forward pass (both bound memory, neither changes the result beyond rounding);
    `cache_kw`: the forward argument taking the KV cache (None = `cache` where the model's forward
    has it, as in transformers 5, else `past_key_values`).
    """
    import torch
    from transformers import DynamicCache

    if not stems or not targets:
        raise ValueError("branch_logprobs needs at least one stem and one target")
    prompt_ids = _encode(tokenizer, prompt)
    if not prompt_ids:
        raise ValueError("branch_logprobs needs a non-empty prompt")
    stem_ids = [_encode(tokenizer, s) for s in stems]
    target_ids = [_encode(tokenizer, t) for t in targets]
    if any(not s for s in stem_ids) or any(not t for t in target_ids):
        raise ValueError("every stem and target must encode to at least one token")
    text, bounds = _encode_segments(tokenizer, prompt_ids, segments)
    probe_len = max(len(s) for s in stem_ids) + max(len(t) for t in target_ids)
    fits = [max_context is None or b + probe_len <= max_context for b in bounds]
    out: list[list[list[float]] | None] = [None] * len(bounds)
    if not any(fits):
        return out
    L = max(b for b, ok in zip(bounds, fits, strict=True) if ok)
    cache_kw = cache_kw or cache_kwarg(model)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            for s in range(0, L, chunk_tokens):
                ids = torch.tensor([text[s:min(L, s + chunk_tokens)]], device=dev)
                pos = torch.arange(s, s + ids.shape[1], device=dev)[None]
                model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            blocks = [_block(bounds[i], i, s, stem_ids[s], target_ids)
                      for i in range(len(bounds)) if fits[i] for s in range(len(stems))]
            result = [[[0.0] * len(targets) for _ in stems] if ok else None for ok in fits]
            k = 0
            while k < len(blocks):
                group, size = [], 0
                while k < len(blocks) and (not group or size + len(blocks[k].tokens) <= branch_tokens):
                    group.append(blocks[k])
                    size += len(blocks[k].tokens)
                    k += 1
                _run_group(model, cache, cache_kw, L, group, result, dev)
                cache.crop(L - cache.get_seq_length())  # negative: drop the branch tokens (any version)
            out = result
    finally:
        if was_training:
            model.train()
    return out


def _run_group(model: Any, cache: Any, cache_kw: str, L: int, group: list[_Block],
               result: list[list[list[float]] | None], dev: Any) -> None:
    import torch

    G = sum(len(b.tokens) for b in group)
    dtype = next(model.parameters()).dtype
    allowed = torch.zeros((G, L + G), dtype=torch.bool)
    ids, pos, keep, targets = [], [], [], []  # keep: group positions whose logits are read
    off = 0
    for b in group:
        for j, tok in enumerate(b.tokens):
            ids.append(tok)
            allowed[off + j, :b.boundary] = True
            for m in b.local[j]:
                allowed[off + j, L + off + m] = True
            depth = len(b.local[j]) - 1  # tokens of the block before this one on its path
            pos.append(b.boundary + depth)
        for t, at, tok in b.scored:
            keep.append(off + at)
            targets.append((b.row, b.stem, t, tok))
        off += len(b.tokens)
    mask = torch.zeros((1, 1, G, L + G), dtype=dtype)
    mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)
    uniq = sorted(set(keep))
    where = {p: k for k, p in enumerate(uniq)}
    logits = model(input_ids=torch.tensor([ids], device=dev), attention_mask=mask.to(dev),
                   position_ids=torch.tensor([pos], device=dev), use_cache=True,
                   logits_to_keep=torch.tensor(uniq, device=dev), **{cache_kw: cache}).logits[0]
    logp = logits.float().log_softmax(-1)
    for p, (row, s, t, tok) in zip(keep, targets, strict=True):
        result[row][s][t] += float(logp[where[p], tok])


def naive_logprobs(model: Any, tokenizer: Any, prompt: str, segments: Sequence[str], stems: Sequence[str],
                   targets: Sequence[str]) -> list[list[list[float]]]:
    """The same numbers as `branch_logprobs`, one full forward pass per (boundary, stem, target):
    the reference the fast path is tested against, and the baseline of its benchmark."""
    import torch

    prompt_ids = _encode(tokenizer, prompt)
    seg_ids = [_encode(tokenizer, s) for s in segments]
    dev = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(len(segments) + 1):
            prefix = prompt_ids + [t for s in seg_ids[:i] for t in s]
            rows = []
            for stem in stems:
                ctx = prefix + _encode(tokenizer, stem)
                row = []
                for target in targets:
                    tgt = _encode(tokenizer, target)
                    ids = torch.tensor([ctx + tgt], device=dev)
                    logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
                    row.append(sum(float(logp[len(ctx) - 1 + m, tok]) for m, tok in enumerate(tgt)))
                rows.append(row)
            out.append(rows)
    return out


# ----------------------------------------------------------------------------- ablation


def vocab_mask(tokenizer: Any, pattern: str) -> list[bool]:
    """One bool per vocabulary id: does the token's decoded text match `pattern` (`re.search`)?
    The `counted` argument of `ablation_logprobs`."""
    import re

    rx = re.compile(pattern)
    return [bool(rx.search(t)) for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])]


def ablation_logprobs(model: Any, tokenizer: Any, prompt: str, segments: Sequence[str], tail: str = "", *,
                      window: int | None = 1024, max_context: int | None = None, chunk_tokens: int = 512,
                      branch_tokens: int = 1024, cache_kw: str | None = None,
                      counted: Sequence[bool] | None = None) -> list[tuple[float, float, int] | None]:
    """How much the rest of a text depends on each segment (the `ablation` importance estimator).

    The text is `prompt + segments[0] + … + segments[n-1] + tail`. For segment i, its *rest* is
    the text after it (later segments and the tail), at most `window` tokens (None = all). Returns
    per segment ``(logp_with, logp_without, tokens)``: the log-probability of its rest under
    teacher forcing with segment i in place and with segment i removed (the rest then follows
    segment i-1 directly, positions closing the gap), and the number of rest tokens counted;
    ``(0.0, 0.0, 0)`` where there is nothing to compare (the last piece with no rest, an empty
    segment); None where the segment does not fit `max_context`. `counted` (one bool per
    vocabulary id) restricts the sums and the count to the rest tokens it marks (e.g. the math
    tokens, `HFEngine.ablation_logprobs`); the window still counts every token.

    Cost: the whole text is encoded once (KV cache; its token log-probabilities give every
    `logp_with`); each `logp_without` is a *branch* of its rest's tokens appended after the
    cached text with a 4D mask that hides segment i and everything after it (as the forced probes
    of `branch_logprobs`), several branches per forward pass (`branch_tokens`). So n segments of
    a T-token text cost one pass over T tokens plus about n·min(T/2, window) branch tokens,
    instead of n passes over T tokens. `naive_ablation_logprobs` is the slow reference.
    """
    import torch
    from transformers import DynamicCache

    prompt_ids = _encode(tokenizer, prompt)
    if not prompt_ids:
        raise ValueError("ablation_logprobs needs a non-empty prompt")
    text, bounds = _encode_segments(tokenizer, prompt_ids, segments)
    text.extend(_encode(tokenizer, tail))
    L = len(text) if max_context is None else min(len(text), max_context)
    n = len(segments)
    rests: list[tuple[int, int] | None] = []   # rest span [a, e) of segment i, in text positions
    out: list[tuple[float, float, int] | None] = [None] * n
    for i in range(n):
        a = bounds[i + 1]
        e = L if window is None else min(L, a + window)
        fits = a <= L
        rests.append((a, e) if fits and e > a and a > bounds[i] else None)
        if fits and rests[i] is None and (a == len(text) or a == bounds[i]):  # no rest, or an empty segment
            out[i] = (0.0, 0.0, 0)
    if not any(rests):
        return out
    counts = None if counted is None else [bool(counted[tok]) for tok in text]  # per text position
    cache_kw = cache_kw or cache_kwarg(model)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    token_lp = [0.0] * L          # token_lp[t] = log P(text[t] | text[:t]) for t >= 1
    first_lp = [0.0] * n          # log P(first rest token of i | text[:bounds[i]]), segment i removed
    want = {bounds[i] - 1: [] for i in range(n) if rests[i]}
    for i in range(n):
        if rests[i]:
            want[bounds[i] - 1].append(i)
    try:
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            for s in range(0, L, chunk_tokens):
                e = min(L, s + chunk_tokens)
                ids = torch.tensor([text[s:e]], device=dev)
                pos = torch.arange(s, e, device=dev)[None]
                logp = model(input_ids=ids, position_ids=pos, use_cache=True,
                             **{cache_kw: cache}).logits[0].float().log_softmax(-1)
                nxt = torch.tensor(text[s + 1:e + 1] if e < len(text) else text[s + 1:e] + [0], device=dev)
                lp = logp.gather(-1, nxt[:, None])[:, 0].tolist()
                for t in range(s, e - 1 if e == len(text) else e):
                    if t + 1 < L:
                        token_lp[t + 1] = lp[t - s]
                for t in range(s, e):
                    for i in want.get(t, ()):
                        a = rests[i][0]
                        first_lp[i] = float(logp[t - s, text[a]]) if counts is None or counts[a] else 0.0
            pending = [i for i in range(n) if rests[i]]
            without = {i: first_lp[i] for i in pending}
            k = 0
            while k < len(pending):
                group, size = [], 0
                while k < len(pending):
                    a, e = rests[pending[k]]
                    if group and size + (e - a - 1) > branch_tokens:
                        break
                    group.append(pending[k])
                    size += e - a - 1
                    k += 1
                if size > 0:
                    _run_ablation_group(model, cache, cache_kw, L, text, bounds, rests, group, without, dev,
                                        counts)
                    cache.crop(L - cache.get_seq_length())
            for i in pending:
                a, e = rests[i]
                kept = [t for t in range(a, e) if counts is None or counts[t]]
                out[i] = (float(sum(token_lp[t] for t in kept)), float(without[i]), len(kept))
    finally:
        if was_training:
            model.train()
    return out


def _run_ablation_group(model: Any, cache: Any, cache_kw: str, L: int, text: list[int], bounds: list[int],
                        rests: list[tuple[int, int] | None], group: list[int], without: dict[int, float],
                        dev: Any, counts: Sequence[bool] | None = None) -> None:
    """One forward pass over the branches of `group`: branch i feeds rest tokens a..e-2 of
    segment i at positions bounds[i].., seeing text[:bounds[i]] and its own earlier tokens; its
    logits score rest tokens a+1..e-1 (token a is scored from the cached text's logits), those
    whose text position `counts` marks (all when None)."""
    import torch

    sizes = [rests[i][1] - rests[i][0] - 1 for i in group]
    G = sum(sizes)
    dtype = next(model.parameters()).dtype
    allowed = torch.zeros((G, L + G), dtype=torch.bool)
    ids: list[int] = []
    pos: list[int] = []
    off = 0
    for i, m in zip(group, sizes, strict=True):
        a, _ = rests[i]
        ids.extend(text[a:a + m])
        pos.extend(range(bounds[i], bounds[i] + m))
        allowed[off:off + m, :bounds[i]] = True
        allowed[off:off + m, L + off:L + off + m] = torch.ones((m, m), dtype=torch.bool).tril()
        off += m
    mask = torch.zeros((1, 1, G, L + G), dtype=dtype)
    mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)
    logits = model(input_ids=torch.tensor([ids], device=dev), attention_mask=mask.to(dev),
                   position_ids=torch.tensor([pos], device=dev), use_cache=True, **{cache_kw: cache}).logits[0]
    logp = logits.float().log_softmax(-1)
    off = 0
    for i, m in zip(group, sizes, strict=True):
        a, _ = rests[i]
        nxt = torch.tensor(text[a + 1:a + 1 + m], device=logp.device)
        lp = logp[off:off + m].gather(-1, nxt[:, None])[:, 0]
        if counts is not None:
            lp = lp[torch.tensor(counts[a + 1:a + 1 + m], device=lp.device)]
        without[i] += float(lp.sum())
        off += m


def naive_ablation_logprobs(model: Any, tokenizer: Any, prompt: str, segments: Sequence[str], tail: str = "",
                            *, window: int | None = 1024, counted: Sequence[bool] | None = None
                            ) -> list[tuple[float, float, int] | None]:
    """The same numbers as `ablation_logprobs`, two full forward passes per segment (with and
    without it): the reference the fast path is tested against."""
    import torch

    prompt_ids = _encode(tokenizer, prompt)
    seg_ids = [_encode(tokenizer, s) for s in segments]
    tail_ids = _encode(tokenizer, tail)
    dev = next(model.parameters()).device

    def keep(tok: int) -> bool:
        return counted is None or bool(counted[tok])

    def rest_lp(ids: list[int], start: int, count: int) -> float:
        x = torch.tensor([ids], device=dev)
        logp = model(input_ids=x).logits[0].float().log_softmax(-1)
        return sum(float(logp[t - 1, ids[t]]) for t in range(start, start + count) if keep(ids[t]))

    out: list[tuple[float, float, int] | None] = []
    with torch.inference_mode():
        for i in range(len(segments)):
            rest = [t for s in seg_ids[i + 1:] for t in s] + tail_ids
            if window is not None:
                rest = rest[:window]
            if not rest or not seg_ids[i]:
                out.append((0.0, 0.0, 0))
                continue
            before = prompt_ids + [t for s in seg_ids[:i] for t in s]
            with_i = before + seg_ids[i]
            out.append((rest_lp(with_i + rest, len(with_i), len(rest)),
                        rest_lp(before + rest, len(before), len(rest)), sum(keep(t) for t in rest)))
    return out
