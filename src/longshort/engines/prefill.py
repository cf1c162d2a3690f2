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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


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


def prefill(forward: Callable[..., Any], cache: Any, prompts: Sequence[Sequence[int]], row_prompts: Sequence[int],
            *, pad: int, device: Any, reuse: bool = True) -> tuple[Any, Any, Any]:
    """Encode the prompts of a decode batch into `cache` (rows: `row_prompts[r]` is row r's
    prompt index). Returns the next-token logits per row (R × V), the attention mask (R × L) and
    each row's last position id (R)."""
    import torch

    L = max(len(p) for p in prompts)
    root = prefix_roots(prompts) if reuse else list(range(len(prompts)))
    encoded = sorted(set(root[p] for p in row_prompts)) if reuse else list(row_prompts)
    ids = torch.full((len(encoded), L), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), L), dtype=torch.long)
    for k, p in enumerate(encoded):
        seq = prompts[p]
        ids[k, L - len(seq):] = torch.tensor(list(seq))
        mask[k, L - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    if not reuse:
        logits = forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        return logits[:, -1, :], mask, pos[:, -1]
    slot = {p: k for k, p in enumerate(encoded)}
    # the column of each prompt's last token in its root's (left-padded) row
    col = [L - len(prompts[root[p]]) + len(prompts[p]) - 1 for p in range(len(prompts))]
    keep = sorted(set(col[p] for p in row_prompts))
    kept = 1 if keep == [L - 1] else torch.tensor(keep, device=device)
    logits = forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=kept).logits
    at = {c: k for k, c in enumerate(keep)}
    src = [slot[root[p]] for p in row_prompts]
    src_t = torch.tensor(src, device=device)
    logits = logits[src_t, torch.tensor([at[col[p]] for p in row_prompts], device=device)]
    if src != list(range(len(encoded))):
        cache.batch_select_indices(src_t)
        mask = mask[src_t]
    ends = torch.tensor([col[p] + 1 for p in row_prompts], device=device)
    mask = mask * (torch.arange(L, device=device)[None, :] < ends[:, None]).to(mask.dtype)
    last = torch.tensor([len(prompts[p]) - 1 for p in row_prompts], device=device)
    return logits, mask, last
