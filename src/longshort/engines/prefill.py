"""The prefill of one decode batch, with prompts that share a prefix encoded once.

A batch's prompts are often prefixes of one another: the Monte Carlo prefixes of one trace
(prefix i + 1 extends prefix i), the n samples of one request, RL's group of dialogues on one
question. `prefill` encodes only the *roots* (prompts that begin no longer prompt of the batch)
and decodes every other prompt off its root's KV cache: the row is a copy of the root's, the
root's columns after the prompt's end are masked out of attention, and the prompt's next-token
logits are read at its own last column (`logits_to_keep` with those columns). Position ids
continue from the prompt's own length, so the new tokens see exactly the prompt, as if it had
been encoded alone (up to floating-point differences between batch shapes, which only matter at
near-ties). Rows are left-padded; the masked columns cost attention time, not MLP time.

`reuse=False` encodes every row's prompt separately (the baseline of `benchmarks/`).

Rows are left-padded to the longest prompt, and a padded column costs the model as much as a real
token (the MLP runs on it; the mask only keeps attention off it). `prefill_bucketed` therefore
splits a batch whose prompts differ much in length into length buckets (`length_buckets`: the split
with the fewest token positions, counting each extra forward pass), prefills each into its own
cache, and joins the buckets' caches left-padded into one batch: 32 GSM8K prompts in one pass are
42% padding.

`prefill_stored` encodes prompts whose start is already cached from an earlier row (a
continuous session's `PrefixStore`): only the rest of each prompt goes through the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

# Shortest start worth encoding once for several prompts (tokens): below it, the second
# forward pass costs more than it saves.
MIN_SHARED = 16
# What one more prefill forward pass costs, in token positions (its fixed per-layer overhead on a
# small model; the shared start it encodes again is counted apart): a length bucket must save at
# least this many padded positions.
PASS_COST = 64


class StartMemo:
    """The KV cache of the shared starts `prefill` encoded (per layer, H × n × D), by their tokens,
    for the later prefills of one decode session: a continuous session prefills every join (a
    dialogue's next turns, in groups) with the same role's system prompt first, and that start is
    then read from here instead of encoded again. At most `entries` starts, oldest dropped. Kept for
    one session only, since the model must not change in between (a policy being trained does)."""

    def __init__(self, entries: int = 8):
        self.entries = entries
        self._kv: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        self.hits = self.misses = 0

    def get(self, ids: Sequence[int]) -> list[tuple[Any, Any]] | None:
        return self._kv.get(tuple(ids))

    def put(self, ids: Sequence[int], layers: list[tuple[Any, Any]]) -> None:
        key = tuple(ids)
        self._kv.pop(key, None)
        self._kv[key] = layers
        while len(self._kv) > self.entries:
            self._kv.pop(next(iter(self._kv)))


def prefix_roots(prompts: Sequence[Sequence[int]]) -> list[int]:
    """For each prompt, the index of the longest prompt of the list that begins with it (itself
    when none is longer; equal prompts share the first one).

    >>> prefix_roots([[1, 2], [1, 2, 3], [4], [1, 2, 3], [1]])
    [1, 1, 2, 1, 1]
    """
    prompts = [list(p) for p in prompts]  # one copy each; the comparisons below slice these
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    roots: list[int] = []
    root = [0] * len(prompts)
    for i in order:
        p = prompts[i]
        for r in roots:
            if prompts[r][:len(p)] == p:
                root[i] = r
                break
        else:
            roots.append(i)
            root[i] = i
    return root


def shared_starts(prompts: Sequence[Sequence[int]], encoded: Sequence[int], ends: dict[int, int], *,
                  min_shared: int = MIN_SHARED) -> list[tuple[int, int]]:
    """Group the `encoded` prompts (indices into `prompts`) that begin with the same tokens: for
    each, (its group, the length of the start it shares with the group, encoded once). A start is
    shared only when it is at least `min_shared` tokens long, and it stops before the shortest
    prompt that reads its logits from the group (`ends[k]`: that length, per encoded prompt), so
    every such prompt has a token after it. A prompt alone in its group gets the longest shared
    start (capped the same way): it would be padding there otherwise.

    >>> a, b, c = [1] * 20 + [2, 3], [1] * 20 + [4], [9] * 30
    >>> shared_starts([a, b, c], [0, 1, 2], {0: 22, 1: 21, 2: 30})
    [(0, 20), (0, 20), (1, 20)]
    >>> shared_starts([a, c], [0, 1], {0: 22, 1: 30})  # nothing shared: one phase
    [(0, 0), (1, 0)]
    """
    from os.path import commonprefix

    order = sorted(range(len(encoded)), key=lambda k: list(prompts[encoded[k]]))
    groups: list[list[int]] = []
    shared: list[int] = []
    for k in order:
        if groups:
            prev = prompts[encoded[groups[-1][-1]]]
            start = len(commonprefix([list(prev), list(prompts[encoded[k]])]))
            if len(groups[-1]) > 1:
                start = min(start, shared[-1])
            start = min(start, ends[encoded[k]] - 1, min(ends[encoded[j]] for j in groups[-1]) - 1)
            if start >= min_shared:
                groups[-1].append(k)
                shared[-1] = start
                continue
        groups.append([k])
        shared.append(0)
    longest = max((s for g, s in zip(groups, shared, strict=True) if len(g) > 1), default=0)
    out = [(0, 0)] * len(encoded)
    for gi, (g, s) in enumerate(zip(groups, shared, strict=True)):
        if len(g) == 1 and longest:
            s = min(longest, ends[encoded[g[0]]] - 1)
        for k in g:
            out[k] = (gi, s)
    return out


def prefill(forward: Callable[..., Any], cache: Any, prompts: Sequence[Sequence[int]], row_prompts: Sequence[int],
            *, pad: int, device: Any, reuse: bool = True, min_shared: int = MIN_SHARED,
            memo: StartMemo | None = None) -> tuple[Any, Any, Any]:
    """Encode the prompts of a decode batch into `cache` (rows: `row_prompts[r]` is row r's
    prompt index). Returns the next-token logits per row (R × V), the attention mask (R × W) and
    each row's last position id (R). With a `memo`, shared starts it holds are not encoded again,
    and the ones encoded here are added to it."""
    import torch

    if not reuse:
        L = max(len(p) for p in prompts)
        ids, mask = _left_padded([prompts[p] for p in row_prompts], L, pad)
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        return logits[:, -1, :], mask, pos[:, -1]
    root = prefix_roots(prompts)
    encoded = sorted(set(root[p] for p in row_prompts))
    slot = {p: k for k, p in enumerate(encoded)}
    ends: dict[int, int] = {}
    for p in row_prompts:
        ends[root[p]] = min(ends.get(root[p], len(prompts[p])), len(prompts[p]))
    split = shared_starts(prompts, encoded, ends, min_shared=min_shared)
    if any(s == 0 for _, s in split):
        split = [(k, 0) for k in range(len(encoded))]  # one phase: every prompt encoded whole
    P = max(s for _, s in split)  # the shared starts' region: columns [0, P)
    S = max(len(prompts[r]) - s for r, (_, s) in zip(encoded, split, strict=True))  # the rest: columns [P, P + S)
    if P:
        # Phase 1: each group's shared start once, left-padded in the first region; then the
        # cache's rows are copied out to the group's prompts.
        first: dict[int, int] = {}
        for k, (g, _) in enumerate(split):
            first.setdefault(g, k)
        starts = [prompts[encoded[k]][:split[k][1]] for k in first.values()]
        ids1, mask1 = _left_padded(starts, P, pad)
        ids1, mask1 = ids1.to(device), mask1.to(device)
        known = [memo.get(st) for st in starts] if memo is not None else [None]
        if all(kv is not None for kv in known):
            memo.hits += len(starts)
            _write_left_padded(cache, list(enumerate(known)), P, rows=len(known))
        else:
            forward(cache, input_ids=ids1, attention_mask=mask1, position_ids=(mask1.cumsum(-1) - 1).clamp(min=0),
                    logits_to_keep=1)
            if memo is not None:
                memo.misses += len(starts)
                for g, st in enumerate(starts):
                    cols = slice(P - len(st), P)
                    memo.put(st, [(layer.keys[g, :, cols].clone(), layer.values[g, :, cols].clone())
                                  for layer in cache.layers])
        group_row = {g: i for i, g in enumerate(first)}
        rows = torch.tensor([group_row[g] for g, _ in split], device=device)
        cache.batch_select_indices(rows)
        mask1 = mask1[rows]
    # Phase 2 (the only one when nothing is shared): the rest of every encoded prompt.
    rests = [prompts[r][s:] for r, (_, s) in zip(encoded, split, strict=True)]
    ids, mask2 = _left_padded(rests, S, pad)
    ids, mask2 = ids.to(device), mask2.to(device)
    shift = torch.tensor([s for _, s in split], device=device)[:, None]
    pos = (mask2.cumsum(-1) - 1).clamp(min=0) + shift
    mask = torch.cat([mask1, mask2], dim=1) if P else mask2

    def column(p: int) -> int:
        """The column of prompt p's last token in its root's row."""
        r = root[p]
        s = split[slot[r]][1]
        t = len(prompts[p]) - 1
        return P - s + t if t < s else P + S - (len(prompts[r]) - s) + (t - s)

    col = {p: column(p) for p in set(row_prompts)}
    keep = sorted(set(col[p] - P for p in row_prompts))
    kept = 1 if keep == [S - 1] else torch.tensor(keep, device=device)
    logits = forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=kept).logits
    at = {c: k for k, c in enumerate(keep)}
    src = [slot[root[p]] for p in row_prompts]
    src_t = torch.tensor(src, device=device)
    logits = logits[src_t, torch.tensor([at[col[p] - P] for p in row_prompts], device=device)]
    if src != list(range(len(encoded))):
        cache.batch_select_indices(src_t)
        mask = mask[src_t]
    stop = torch.tensor([col[p] + 1 for p in row_prompts], device=device)
    mask = mask * (torch.arange(P + S, device=device)[None, :] < stop[:, None]).to(mask.dtype)
    last = torch.tensor([len(prompts[p]) - 1 for p in row_prompts], device=device)
    return logits, mask, last


def length_buckets(lengths: Sequence[int], *, fixed: int = PASS_COST) -> list[list[int]]:
    """Split items of these lengths into buckets, each prefilled in its own forward pass of
    (items × its longest) positions plus `fixed`: the split with the fewest positions in all
    (exact, by dynamic programming over the items sorted by length). Returns the buckets as lists
    of item indices, shortest bucket first; one bucket when splitting does not pay.

    >>> length_buckets([10, 200, 12, 190], fixed=64)
    [[0, 2], [3, 1]]
    >>> length_buckets([100, 98, 101, 99], fixed=64)
    [[1, 3, 0, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: the cheapest split of the j shortest items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * longest + fixed
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def prefill_bucketed(forward: Callable[..., Any], cache: Any, new_cache: Callable[[], Any],
                     prompts: Sequence[Sequence[int]], row_prompts: Sequence[int], *, pad: int, device: Any,
                     min_shared: int = MIN_SHARED, fixed: int = PASS_COST,
                     memo: StartMemo | None = None) -> tuple[Any, Any, Any]:
    """`prefill` in length buckets (see the module docstring): the prompts that extend one another
    stay together (one root each, as `prefill` shares them), the roots are split by the length
    they add after the batch's common start (`length_buckets`), each bucket is prefilled into a
    `new_cache()`, and the buckets' keys and values are written into the empty `cache` left-padded
    to a common width, in row order. Same returns as `prefill`. A batch that splitting does not
    help is one `prefill` call."""
    from os.path import commonprefix

    import torch

    root = prefix_roots(prompts)
    encoded = sorted(set(root[p] for p in row_prompts))
    common = len(commonprefix([list(prompts[r]) for r in encoded])) if len(encoded) > 1 else 0
    if common < min_shared:
        common = 0
    buckets = length_buckets([len(prompts[r]) - common for r in encoded], fixed=fixed + common)
    if len(buckets) == 1:
        return prefill(forward, cache, prompts, row_prompts, pad=pad, device=device, min_shared=min_shared, memo=memo)
    parts = []
    for bucket in buckets:
        roots = {encoded[k] for k in bucket}
        rows = [r for r, p in enumerate(row_prompts) if root[p] in roots]
        mine = sorted({row_prompts[r] for r in rows})
        at = {p: k for k, p in enumerate(mine)}
        sub = new_cache()
        logits, mask, last = prefill(forward, sub, [prompts[p] for p in mine], [at[row_prompts[r]] for r in rows],
                                     pad=pad, device=device, min_shared=min_shared, memo=memo)
        parts.append((torch.tensor(rows, device=device), sub, logits, mask, last))
    R, W = len(row_prompts), max(mask.shape[1] for *_, mask, _ in parts)
    _write_left_padded(cache, [(rows, [(layer.keys, layer.values) for layer in sub.layers])
                               for rows, sub, *_ in parts], W, rows=R)
    first = parts[0][2]
    logits = first.new_empty((R, first.shape[1]))
    mask = parts[0][3].new_zeros((R, W))
    last = parts[0][4].new_empty((R,))
    for rows, _, lg, m, ls in parts:
        logits[rows] = lg
        mask[rows, W - m.shape[1]:] = m
        last[rows] = ls
    return logits, mask, last


def _write_left_padded(cache: Any, parts: Sequence[tuple[Any, Sequence[tuple[Any, Any]]]], width: int, *,
                       rows: int) -> None:
    """Fill the empty `cache` with `rows` rows, left-padded to `width` columns, from `parts`: each
    a batch index (one row, or a tensor of rows) and, per layer, the keys and values of those rows
    (H × n × D for one row, len(index) × H × n × D for several)."""
    for li in range(len(parts[0][1])):
        k0, v0 = parts[0][1][li]
        keys = k0.new_zeros((rows, k0.shape[-3], width, k0.shape[-1]))
        values = v0.new_zeros((rows, v0.shape[-3], width, v0.shape[-1]))
        for index, layers in parts:
            k, v = layers[li]
            keys[index, :, width - k.shape[-2]:] = k
            values[index, :, width - v.shape[-2]:] = v
        cache.update(keys, values, li)


def _left_padded(seqs: Sequence[Sequence[int]], width: int, pad: int) -> tuple[Any, Any]:
    """Token ids and attention mask of `seqs`, each left-padded to `width` columns."""
    import torch

    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, seq in enumerate(seqs):
        if seq:
            ids[k, width - len(seq):] = torch.tensor(list(seq))
            mask[k, width - len(seq):] = 1
    return ids, mask


def common_start(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share (binary search over C-speed slice compares).

    >>> common_start([1, 2, 3, 4], [1, 2, 5]), common_start([1], [2]), common_start([7, 8], [7, 8, 9])
    (2, 0, 2)
    """
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi - 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def prefill_stored(forward: Callable[..., Any], cache: Any, prompts: Sequence[Sequence[int]],
                   starts: Sequence[Sequence[tuple[Any, Any]]], row_prompts: Sequence[int], *, pad: int,
                   device: Any) -> tuple[Any, Any, Any]:
    """Encode prompts whose first tokens' KV cache is already known (`starts[i]`: per layer, the
    keys and values of prompt i's first n_i tokens, each H × n_i × D, n_i < len(prompt i)): the
    known starts go into `cache` left-padded to a common width, then every prompt's rest is
    encoded after its own start in one forward pass, with position ids continuing from n_i (the
    two regions may leave masked columns between a short start and its rest, as `prefill` does).
    Same returns as `prefill`: next-token logits per row, attention mask and last position ids."""
    import torch

    lengths = [int(layers[0][0].shape[1]) for layers in starts]
    U, W1 = len(prompts), max(lengths)
    _write_left_padded(cache, list(enumerate(starts)), W1, rows=U)
    mask1 = torch.zeros((U, W1), dtype=torch.long)
    for u, n in enumerate(lengths):
        mask1[u, W1 - n:] = 1
    rests = [list(p[n:]) for p, n in zip(prompts, lengths, strict=True)]
    S = max(len(r) for r in rests)
    ids, mask2 = _left_padded(rests, S, pad)
    ids, mask = ids.to(device), torch.cat([mask1, mask2], dim=1).to(device)
    shift = torch.tensor(lengths, device=device)[:, None]
    pos = (mask2.to(device).cumsum(-1) - 1).clamp(min=0) + shift
    logits = forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1, :]
    last = torch.tensor([len(p) - 1 for p in prompts], device=device)
    if list(row_prompts) != list(range(U)):
        src = torch.tensor(list(row_prompts), device=device)
        cache.batch_select_indices(src)
        logits, mask, last = logits[src], mask[src], last[src]
    return logits, mask, last
