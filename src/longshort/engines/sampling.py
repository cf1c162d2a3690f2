"""Token sampling for our decode loops: temperature, top-p (nucleus) and greedy, per row, with
counter-based uniforms so a seeded row samples the same tokens whatever else is in its batch.

`sample_tokens` is the one sampler (the transformers engine and RL's rollouts use it). Draws are
inverse-CDF draws: a uniform u picks the first token, in vocabulary order, whose cumulative
probability exceeds u × the row's mass.

The nucleus of a row is every token whose probability is at least the row's *threshold* t*:
the probability of the token at which the running mass, taking tokens from the most likely down,
first reaches ``top_p`` × the row's total mass. That is the usual "smallest set of the most
likely tokens holding top_p of the mass", with the tokens tied with its last one kept too (so the
nucleus does not depend on how a sort breaks ties). Equivalently, token x is in the nucleus
exactly when the mass of the tokens strictly more likely than x is below ``top_p`` × the mass.

Sampling from the nucleus never sorts the vocabulary (a sort of all 49k tokens per row cost
most of the decoding time on flat distributions: the tiny random test models always, a real
model at temperature 1 on some positions):

1. *Rejection*: draw x from the whole distribution and keep it when it is in the nucleus (one
   masked sum per row). A kept draw has exactly the nucleus distribution p(x) / p(nucleus); a draw
   is kept with probability >= top_p, so for the usual top_p (0.9-0.95) nearly every row is done
   after one draw. Rejected rows draw again with their next uniform, up to `_TRIES` draws.
   A masked sum too close to the boundary to decide in float32 is redone in float64.
2. *Threshold*: rows still rejected (small top_p) get t* from `nucleus_threshold` (one pass buckets the
   probabilities by their float bit pattern, which orders them exactly; the bucket masses locate
   the bucket holding t*, and only that bucket's few entries are sorted), then an inverse-CDF
   draw from the nucleus itself.

Every uniform is a pure function of (row seed, step, draw number), so a row's token depends on
that row alone. `nucleus_threshold_by_sort` is the reference (a full sort); the tests hold it
equal to `nucleus_threshold` and to the rejection test.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- counter-based RNG

_M64 = (1 << 64) - 1


def _i64(x: int) -> int:
    """Two's-complement int64 view of an unsigned 64-bit constant."""
    x &= _M64
    return x - (1 << 64) if x >= (1 << 63) else x


_K_SEED, _K_STEP, _K_DRAW = _i64(0x9E3779B97F4A7C15), _i64(0xC2B2AE3D27D4EB4F), _i64(0x165667B19E3779F9)
_MIX1, _MIX2 = _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _shr(x, s: int):
    """Logical right shift of an int64 tensor (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x):
    """splitmix64 finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def row_seed(seed: int, sample: int) -> int:
    """The sampling seed of sample `sample` of a request seeded with `seed`."""
    import torch

    t = torch.tensor([_i64(seed * 1_000_003 + sample * 7919 + 1)], dtype=torch.int64)
    return int(_mix(_mix(t))[0])


def row_uniform(seeds, step, draw: int = 0):
    """One uniform (0, 1) number per row, a pure function of (row seed, step, draw): float64 [R].

    `step` is one int for every row or an int64 tensor [R], one step per row (rows that joined a
    running decode later are at earlier steps); both give the same numbers for the same steps."""
    import torch

    if isinstance(step, int):
        counter = _i64(step * _K_STEP + draw * _K_DRAW)
    else:  # int64 arithmetic wraps modulo 2**64, as _i64 does for the int
        counter = step * _K_STEP + _i64(draw * _K_DRAW)
    x = _mix(_mix(seeds * _K_SEED + counter))
    return (_shr(x, 11).to(torch.float64) + 0.5) / float(1 << 53)


# ----------------------------------------------------------------------------- nucleus

_BUCKET_BITS = 12  # 2048-4096 buckets in the threshold search: ~12-24 entries each for 49k tokens
_BUCKETS = 1 << _BUCKET_BITS
_SPAN = 115 << 23  # float32 bit-pattern distance of e**-80: smaller probabilities share bucket 0
_TRIES = 3  # rejection draws before a row's nucleus threshold is computed


def _draw(cdf, u):
    """Index drawn from each row of the cumulative (unnormalised) `cdf` with the row's uniform `u`."""
    import torch

    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def nucleus_threshold_by_sort(probs, top_p):
    """Reference for `nucleus_threshold`: sort each row, take the probability at which the
    running mass (float64) first reaches top_p × the row's mass. probs [R, V] float32 >= 0."""
    p64 = probs.double()
    need = top_p.double() * p64.sum(-1)
    vals = p64.sort(-1, descending=True).values
    k = (vals.cumsum(-1) < need[:, None]).sum(-1).clamp(max=probs.shape[-1] - 1)
    return vals.gather(-1, k[:, None])[:, 0].to(probs.dtype)


def nucleus_threshold(probs, top_p):
    """The nucleus threshold t* of each row (see the module docstring) without sorting rows.

    probs [R, V] float32 >= 0 (need not sum to 1); top_p [R] in (0, 1]. Returns t* [R] float32:
    the nucleus of row r is ``probs[r] >= t*[r]``. Masses are summed in float64.
    """
    import torch

    R = probs.shape[0]
    dev = probs.device
    key = probs.contiguous().view(torch.int32)  # orders non-negative floats exactly as their values
    # bucket = (key - lo) >> shift, monotone in the value (ties share a bucket), < _BUCKETS
    hi = key.amax(-1)
    lo = torch.maximum(key.amin(-1), hi - _SPAN)
    bits = (hi - lo + 1).double().log2().ceil()
    shift = (bits - _BUCKET_BITS).clamp(min=0).to(torch.int32)
    offset = torch.arange(R, dtype=torch.int32, device=dev) * _BUCKETS
    bucket = (key - lo[:, None]).clamp_(min=0).bitwise_right_shift_(shift[:, None]).clamp_(max=_BUCKETS - 1)
    flat = bucket.add_(offset[:, None])  # row * _BUCKETS + bucket
    p64 = probs.double()
    mass = torch.zeros(R * _BUCKETS, dtype=torch.float64, device=dev).index_add_(
        0, flat.view(-1), p64.view(-1)).view(R, _BUCKETS)
    need = top_p.double() * p64.sum(-1)
    # mass of the buckets at or above b; t* is in the highest b where that reaches need
    at_or_above = mass.flip(-1).cumsum(-1).flip(-1)
    b_star = ((at_or_above >= need[:, None]).sum(-1) - 1).clamp(min=0)
    above = torch.cat([at_or_above[:, 1:], at_or_above.new_zeros((R, 1))], 1).gather(-1, b_star[:, None])[:, 0]
    # Resolve inside bucket b*: its entries, most likely first, running mass after `above`.
    rows, cols = (flat == (b_star.to(torch.int32) + offset)[:, None]).nonzero(as_tuple=True)  # rows ascending
    vals = p64[rows, cols]
    order = vals.argsort(descending=True, stable=True)
    order = order[rows[order].argsort(stable=True)]  # by row, then by value descending
    rows, vals = rows[order], vals[order]
    counts = torch.bincount(rows, minlength=R)
    start = counts.cumsum(0) - counts
    run = vals.cumsum(0)
    run = run - (run[start] - vals[start])[rows]  # running mass within each row's bucket
    short = (above[rows] + run < need[rows]).to(torch.int64)
    k = torch.zeros(R, dtype=torch.int64, device=dev).scatter_add_(0, rows, short)
    pick = start + torch.minimum(k, counts - 1)
    return vals[pick].to(probs.dtype)


def _rows(step, idx):
    """`step` for the rows `idx`: the int itself, or those rows' entries of a per-row tensor."""
    return step if isinstance(step, int) else step[idx]


def _nucleus_draws(probs, cdf, top_p, seeds, step, first):
    """One token per row from the top-p nucleus of `probs` [R, V] (cumulative `cdf`), drawn with
    the rows' counter-based uniforms: rejection first (`first`: the rows' draw 0 from the whole
    distribution), the exact threshold for rows rejected `_TRIES` times."""
    import torch

    R, V = probs.shape
    total = cdf[:, -1].double()
    need = top_p.double() * total
    # A float32 sum of V non-negative terms is within V * 2**-24 of its value (relative), in any
    # summation order; the masked sum and the total each carry such an error, so a masked sum
    # closer than twice that to `need` is recomputed in float64, which then decides.
    slack = 2.05 * V * 2.0**-24 * total
    tokens = torch.empty(R, dtype=torch.int64, device=probs.device)
    todo, x = torch.arange(R, device=probs.device), first
    for draw in range(_TRIES):
        part = len(todo) < R
        p = probs[todo] if part else probs
        if draw:
            x = _draw(cdf[todo], row_uniform(seeds[todo], _rows(step, todo), draw))
        px = p.gather(-1, x[:, None])[:, 0]
        above = _mass_above(p, px).double()
        bar = need[todo] if part else need
        close = ((above - bar).abs() < (slack[todo] if part else slack)).nonzero()[:, 0]
        if len(close):
            p64 = p[close].double()
            above[close] = torch.where(p64 > px[close, None].double(), p64, 0.0).sum(-1)
            bar = bar.clone()
            bar[close] = top_p[todo[close]].double() * p64.sum(-1)
        keep = above < bar
        tokens[todo[keep]] = x[keep]
        todo = todo[~keep]
        if not len(todo):
            return tokens
    tokens[todo] = _threshold_draws(probs[todo], top_p[todo], seeds[todo], _rows(step, todo), _TRIES)
    return tokens


def _mass_above(probs, px):
    """Row sums of the probabilities strictly greater than px [R] (float32 [R])."""
    import torch

    return torch.where(probs > px[:, None], probs, 0.0).sum(-1)


def _threshold_draws(probs, top_p, seeds, step, draw: int, threshold=None):
    """Inverse-CDF draws from the exact nucleus (threshold from `nucleus_threshold`)."""
    import torch

    t_star = (threshold or nucleus_threshold)(probs, top_p)
    kept = torch.where(probs < t_star[:, None], 0.0, probs)
    return _draw(kept.cumsum(-1), row_uniform(seeds, step, draw))


def sample_tokens(logits, temperature, top_p, seeds, step, *, want_logprobs: bool):
    """Pick one token per row.

    logits [R, V]; temperature [R] (0 = greedy); top_p [R]; seeds [R] int64; step: the decoding
    step (tokens generated so far), one int for the batch or an int64 tensor [R] per row (a
    continuous batch, whose rows joined at different steps). Sampling is exact
    sampling of softmax(logits / temperature) restricted to the top-p nucleus (module docstring),
    with counter-based uniforms (cheap, and reproducible whatever the batch).
    The logprob returned is that of the chosen token under softmax(logits / temperature)
    (plain softmax for greedy rows), before top-p.
    Returns (tokens [R] int64, logprobs [R] float32 or None).
    """
    import torch

    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits
    if bool(greedy.all()):
        tokens = logits.argmax(-1)
    else:
        temp = torch.where(greedy, torch.ones_like(temperature), temperature).to(logits.dtype)
        scaled = logits / temp[:, None]
        probs = scaled.softmax(-1)
        cdf = probs.cumsum(-1)
        tokens = _draw(cdf, row_uniform(seeds, step))
        nucleus = ((top_p < 1.0) & ~greedy).nonzero()[:, 0]
        if len(nucleus) == len(tokens):
            tokens = _nucleus_draws(probs, cdf, top_p, seeds, step, tokens)
        elif len(nucleus):
            tokens[nucleus] = _nucleus_draws(probs[nucleus], cdf[nucleus], top_p[nucleus], seeds[nucleus],
                                             _rows(step, nucleus), tokens[nucleus])
        if bool(greedy.any()):
            tokens = torch.where(greedy, logits.argmax(-1), tokens)
    logprobs = None
    if want_logprobs:
        logprobs = scaled.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    return tokens, logprobs
