"""Step-wise decoding for the transformers engine: the one decode loop of the source.

`DecodeSession` holds a running decode batch and advances it one token per `step()`. Work joins
with `add(units)`: the new rows are prefilled apart (`engines.prefill`, shared starts encoded
once, `HFEngine._prefill`), then merged into the running batch at the start of a step, every row left-padded to a
common width (attention mask and position ids already handle left padding: each row sees
exactly its own prompt and tokens). Rows that finish leave the batch. Both reshape the KV cache,
a copy of all of it, so both are batched:

- joins wait until the rows waiting number at least `join_threshold` × the live rows (an empty
  batch takes them at once); a join also drops the finished rows and the leading columns that
  no row attends to any more (the cache would otherwise only grow);
- without a join, finished rows are dropped once they are `compact_threshold` of the batch.

With a `PrefixStore` (continuous sessions), a row that finishes leaves its keys and values
behind, and a prompt that begins with a stored sequence is prefilled from there: a dialogue's
next turn of one role encodes only the partner's turn written since, not the whole dialogue.

A row's sampling state is its own: its seed, and its step (tokens generated so far) in the
counter-based sampler, so a seeded request samples the same tokens whatever else is in its batch
and whenever it joined (up to floating-point differences between batch shapes, which only
matter at near-ties).

`HFEngine.generate` runs one session per packed batch to completion (all rows join at once,
the same decoding as before sessions existed); `ContinuousSession` is the engine's
`open_session()`: continuous batching, requests in and results out while the batch decodes.

The static-cache fast path (CUDA, `HFEngineConfig.fast_path`) keeps fixed batches: a static
session takes rows only while it is empty, finished rows keep decoding (their output ignored),
and `HFEngine.open_session` falls back to the base class's batch-at-a-time session there.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from longshort.engines.base import (
    Completion,
    GenerationRequest,
    GenerationResult,
    GenerationSession,
    SamplingParams,
)
from longshort.engines.prefill import MIN_SHARED, StartMemo, common_start, prefill_stored
from longshort.engines.sampling import row_seed, sample_tokens
from longshort.errors import LongshortError


@dataclass
class Unit:
    """One prompt and the sample indices of one request decoded in the same batch (`req`: the
    request's key, given back with each completion)."""

    req: int
    ids: list[int]
    samples: list[int]
    params: SamplingParams
    seed: int


@dataclass
class _Row:
    """One sample being decoded."""

    req: int
    sample: int
    max_new: int
    stops: list[str]
    window: int  # tokens decoded to look for a stop string
    want_lp: bool
    prompt: list[int]
    toks: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    done: bool = False


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """No dropout while sampling (a policy being trained); the training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()  # CUDA: "out of memory"; CPU allocator: "can't allocate memory"
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def can_merge(model: Any) -> bool:
    """Whether this model's dynamic KV cache can be left-padded and merged (plain per-layer
    key/value tensors; sliding-window and other special layers cannot)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


class PrefixStore:
    """The KV cache of finished rows, kept for later prompts that begin with the same tokens
    (prefix caching across requests, as vLLM's automatic prefix caching does). A dialogue's next
    turn for one role begins with that role's previous prompt and turn: with the store only the
    partner's turn after them is encoded, not the whole dialogue again.

    An entry is one finished row's sequence (its prompt and the tokens fed after it) with its keys
    and values per layer (H × T × D, copied out of the batch). A new prompt takes the entry it
    shares the longest start with, if that start is at least `min_shared` tokens (cut one token
    short of the prompt, whose next-token logits must be computed). An entry taken whole leaves
    the store: the row that continues it stores the longer sequence when it finishes, and an entry
    that a new one extends is dropped. Beyond `budget` tokens the least recently used entries go.
    """

    def __init__(self, budget: int, *, min_shared: int = MIN_SHARED):
        self.budget, self.min_shared = budget, min_shared
        self.entries: OrderedDict[int, tuple[list[int], list[tuple[Any, Any]]]] = OrderedDict()
        self.tokens = 0
        self._key = 0
        self.hits = self.reused = 0  # prompts served from the store, tokens they did not encode

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        """Drop every entry (their keys and values); the counters stay."""
        self.entries.clear()
        self.tokens = 0

    def put(self, ids: list[int], layers: list[tuple[Any, Any]]) -> None:
        if len(ids) < self.min_shared or len(ids) > self.budget:
            return
        for key, (old, _) in list(self.entries.items()):
            if len(old) <= len(ids) and ids[:len(old)] == old:
                self._drop(key)
        self.entries[self._key] = (ids, layers)
        self._key += 1
        self.tokens += len(ids)
        while self.tokens > self.budget:
            self._drop(next(iter(self.entries)))

    def take(self, ids: list[int]) -> list[tuple[Any, Any]] | None:
        """Keys and values of the longest stored start of `ids` (per layer, H × n × D), or None."""
        best, n = None, 0
        for key, (old, _) in self.entries.items():
            m = common_start(old, ids)
            if m > n:
                best, n = key, m
        n = min(n, len(ids) - 1)
        if best is None or n < self.min_shared:
            return None
        old, layers = self.entries[best]
        if n == len(old):
            self._drop(best)
        else:
            self.entries.move_to_end(best)
        self.hits += 1
        self.reused += n
        return [(k[:, :n], v[:, :n]) for k, v in layers]

    def _drop(self, key: int) -> None:
        ids, _ = self.entries.pop(key)
        self.tokens -= len(ids)


class DecodeSession:
    """A decode batch advanced step by step; see the module docstring.

    engine: the `HFEngine` (its model, tokenizer, `_forward`, `_finished`, static-path helpers).
    static: the static-cache fast path (fixed batch: rows join only while the session is empty).
    rows_cap, budget: limits on the rows decoded together and on rows × (cache width + tokens
    still to generate); None = no limit (`generate` packs its batches itself).
    join_threshold: rows waiting, as a fraction of the live rows, that trigger a join.
    store: a `PrefixStore` that keeps each finished row's KV cache for later prompts that begin
    with its tokens (continuous sessions; not on the static path).
    """

    def __init__(self, engine: Any, *, static: bool = False, rows_cap: int | None = None,
                 budget: int | None = None, join_threshold: float = 0.0, store: PrefixStore | None = None):
        self.engine = engine
        self.static = static
        self.store = None if static else store
        self.rows_cap, self.budget = rows_cap, budget
        self.join_threshold = join_threshold
        self.pending: list[Unit] = []
        self.starts = StartMemo()  # shared starts (a role's system prompt) encoded by this session's joins
        self._reset()

    def _reset(self) -> None:
        self.rows: list[_Row] = []  # batch position -> row
        self.cache = self.mask = self.last_pos = self.logits = self.tokens = None
        self.temperature = self.top_p = self.seeds = self.steps = None
        self.fresh: Any = None  # rows that joined this step: logits from their prefill, no token to feed
        self.col = 0  # static path: the next free column

    def add(self, units: Sequence[Unit]) -> None:
        """Queue units; they join the batch at the start of a coming step."""
        self.pending.extend(units)

    @property
    def live(self) -> int:
        return sum(not r.done for r in self.rows)

    def __len__(self) -> int:
        """Rows still to finish: decoding or waiting to join."""
        return self.live + sum(len(u.samples) for u in self.pending)

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> list[tuple[int, int, Completion]]:
        """Join waiting rows (when due), feed every live row its last token, sample the next
        one; returns (request key, sample index, completion) of the rows that finished."""
        import torch

        joined = self._admit()
        if not self.rows:
            return []
        eng = self.engine
        if self.tokens is not None:  # feed the tokens sampled at the previous step
            if not joined and not self.static:
                self._compact()
            self._feed()
        nxt, lp = sample_tokens(self.logits, self.temperature, self.top_p, self.seeds, self.steps,
                                want_logprobs=any(r.want_lp for r in self.rows if not r.done))
        nxt_list = nxt.tolist()
        lp_list = lp.tolist() if lp is not None else None
        finished: list[tuple[int, int, Completion]] = []
        n_live = 0
        for k, r in enumerate(self.rows):
            if r.done:
                continue
            r.toks.append(nxt_list[k])
            if r.want_lp:
                r.lps.append(lp_list[k])
            c = eng._finished(r.toks, r.stops, r.window, r.max_new)
            if c is None:
                n_live += 1
                continue
            r.done = True
            c.logprobs = list(r.lps) if r.want_lp else None
            finished.append((r.req, r.sample, c))
            if self.store is not None:
                self._keep(k, r)
        if n_live == 0:
            self._reset()
        else:
            self.tokens = nxt
            self.steps = self.steps + 1
            self.fresh = torch.zeros_like(self.fresh)
        return finished

    def _feed(self) -> None:
        """One forward pass: every row's last sampled token (rows that just joined feed a masked
        pad and keep the next-token logits of their prefill)."""
        import torch

        eng = self.engine
        fed = ~self.fresh
        ids = torch.where(fed, self.tokens, eng.tokenizer.pad_token_id)[:, None]
        self.last_pos = torch.where(fed, self.last_pos + 1, self.last_pos)
        if self.static:
            self.mask[:, self.col] = 1
            self.col += 1
            self.logits = eng._static_step(self.cache, ids, self.mask, self.last_pos[:, None])
            return
        self.mask = torch.cat([self.mask, fed.to(self.mask.dtype)[:, None]], dim=1)
        logits = eng._forward(self.cache, input_ids=ids, attention_mask=self.mask,
                              position_ids=self.last_pos[:, None]).logits[:, -1, :]
        if bool(self.fresh.any()):
            logits = torch.where(self.fresh[:, None], self.logits.to(logits.dtype), logits)
        self.logits = logits

    def _keep(self, k: int, r: _Row) -> None:
        """Copy finished row k's keys and values (its prompt and the tokens fed after it) into the store."""
        seq = r.prompt + r.toks[:-1]  # the last sampled token was never fed
        cols = self.mask[k].nonzero().squeeze(1)
        if cols.numel() != len(seq):
            return
        self.store.put(seq, [(layer.keys[k, :, cols], layer.values[k, :, cols]) for layer in self.cache.layers])

    def _compact(self) -> None:
        """Drop the finished rows once they are `compact_threshold` of the batch."""
        import torch

        n_dead = len(self.rows) - self.live
        if not n_dead or n_dead < self.engine.config.compact_threshold * len(self.rows):
            return
        keep = [k for k, r in enumerate(self.rows) if not r.done]
        idx = torch.tensor(keep, device=self.engine.device)
        self.cache.batch_select_indices(idx)
        self._select(idx)
        self.rows = [self.rows[k] for k in keep]

    def _select(self, idx: Any) -> None:
        for name in ("mask", "last_pos", "logits", "tokens", "temperature", "top_p", "seeds", "steps", "fresh"):
            setattr(self, name, getattr(self, name)[idx])

    # -- joins ------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Prefill and merge the waiting units that are due and fit; whether any joined."""
        if not self.pending or (self.static and self.rows):
            return False
        live = self.live
        waiting = sum(len(u.samples) for u in self.pending)
        if live and waiting < self.join_threshold * live:
            return False
        rows, longest = live, 0
        if live:
            width = self.mask.shape[1]
            longest = width + max(r.max_new - len(r.toks) for r in self.rows if not r.done)
        take = 0
        for u in self.pending:
            n = len(u.samples)
            span = max(longest, len(u.ids) + u.params.max_new_tokens)
            over = (self.rows_cap is not None and rows + n > self.rows_cap) or \
                   (self.budget is not None and (rows + n) * span > self.budget)
            if over and (rows or take):
                break
            take, rows, longest = take + 1, rows + n, span
        if not take:
            return False
        units, self.pending = self.pending[:take], self.pending[take:]
        self._join(units)
        return True

    def _join(self, units: list[Unit]) -> None:
        """Prefill `units` and add their rows to the batch: the prompts with a start in the store
        from there (`prefill.prefill_stored`), the others in one `HFEngine._prefill`."""
        if self.store is None:
            return self._join_part(units, None)
        starts = [self.store.take(u.ids) for u in units]
        known = [k for k, s in enumerate(starts) if s is not None]
        rest = [units[k] for k, s in enumerate(starts) if s is None]
        if known:
            self._join_part([units[k] for k in known], [starts[k] for k in known])
        if rest:
            self._join_part(rest, None)

    def _join_part(self, units: list[Unit], starts: list[Any] | None) -> None:
        import torch
        from transformers import DynamicCache

        eng = self.engine
        dev = eng.device
        pairs = [(ui, j) for ui, u in enumerate(units) for j in u.samples]
        cache = DynamicCache(config=eng.model.config)
        row_prompts = [ui for ui, _ in pairs]
        if starts is None:
            logits, mask, last = eng._prefill(cache, [u.ids for u in units], row_prompts, memo=self.starts)
        else:
            logits, mask, last = prefill_stored(eng._forward, cache, [u.ids for u in units], starts, row_prompts,
                                                pad=eng.tokenizer.pad_token_id, device=dev)
        rows = []
        for ui, j in pairs:
            p = units[ui].params
            stops = list(p.stop or [])
            # a stop of k characters spans at most ~4k byte-level tokens; +8 for merges around it
            window = 4 * max((len(s) for s in stops), default=0) + 8
            rows.append(_Row(units[ui].req, j, p.max_new_tokens, stops, window, p.logprobs, units[ui].ids))
        params = [units[ui].params for ui, _ in pairs]
        R = len(rows)
        temperature = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
        top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)
        seeds = torch.tensor([row_seed(units[ui].seed, j) for ui, j in pairs], device=dev, dtype=torch.int64)
        steps = torch.zeros(R, device=dev, dtype=torch.int64)
        tokens = torch.zeros(R, device=dev, dtype=torch.int64)
        fresh = torch.ones(R, device=dev, dtype=torch.bool)
        new = dict(mask=mask, last_pos=last, logits=logits, tokens=tokens, temperature=temperature, top_p=top_p,
                   seeds=seeds, steps=steps, fresh=fresh)
        if not self.live:
            self._reset()
            if self.static:
                cache, new["mask"] = eng._to_static(cache, mask, R, mask.shape[1] + max(r.max_new for r in rows))
                self.col = mask.shape[1]
            self.cache, self.rows = cache, rows
            for name, value in new.items():
                setattr(self, name, value)
            self.tokens = None  # nothing to feed before the first sample
            return
        self._merge(cache, rows, new)

    def _merge(self, cache: Any, rows: list[_Row], new: dict[str, Any]) -> None:
        """Append the prefilled `rows` to the batch: finished rows dropped, every row left-padded
        to a common width, the leading columns no kept row attends to cut; one copy of the cache."""
        import torch

        keep = [k for k, r in enumerate(self.rows) if not r.done]
        all_kept = len(keep) == len(self.rows)
        idx = torch.tensor(keep, device=self.engine.device)
        if not all_kept:
            self._select(idx)
        first = int(self.mask.any(0).nonzero()[0, 0])  # columns before it are masked in every row
        old_w = self.mask.shape[1] - first
        new_w = new["mask"].shape[1]
        W = max(old_w, new_w)
        n_old, n_new = len(keep), len(rows)
        for old_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                a, b = getattr(old_layer, name), getattr(new_layer, name)
                a = a[:, :, first:] if all_kept else a[idx, :, first:]
                out = a.new_zeros((n_old + n_new, a.shape[1], W, a.shape[3]))
                out[:n_old, :, W - old_w:] = a
                out[n_old:, :, W - new_w:] = b
                setattr(old_layer, name, out)
        mask = self.mask.new_zeros((n_old + n_new, W))
        mask[:n_old, W - old_w:] = self.mask[:, first:]
        mask[n_old:, W - new_w:] = new["mask"]
        self.mask = mask
        for name in ("last_pos", "logits", "tokens", "temperature", "top_p", "seeds", "steps", "fresh"):
            setattr(self, name, torch.cat([getattr(self, name), new[name].to(getattr(self, name).dtype)]))
        self.rows = [self.rows[k] for k in keep] + rows


class ContinuousSession(GenerationSession):
    """`HFEngine.open_session()`: continuous batching over one `DecodeSession`. Each `step()` is one
    decode step; requests added in between join the running batch (in batched joins, see
    `HFEngineConfig.join_threshold`), and a request's result comes back as soon as its n samples
    are done. With `HFEngineConfig.prefix_cache_tokens`, finished rows' KV caches stay in a
    `PrefixStore` for the session's later prompts that begin with them, such as a dialogue's next
    turn. Rows are limited by the engine's `batch_size` and `token_budget`; out of memory is an
    error here (lower `batch_size`, or the caller's number of requests in flight)."""

    def __init__(self, engine: Any):
        super().__init__(engine)
        tokens = engine._store_tokens
        self.store = PrefixStore(tokens) if tokens else None
        self.decode = DecodeSession(engine, rows_cap=engine._rows_cap, budget=engine._budget,
                                    join_threshold=engine.config.join_threshold, store=self.store)
        self._open: dict[int, tuple[GenerationRequest, int, list[Completion | None]]] = {}
        self._tickets = 0

    def add(self, requests: Sequence[GenerationRequest]) -> None:
        requests = list(requests)
        prompts, seeds = self.engine._prepare(requests)
        units = []
        for r, ids, seed in zip(requests, prompts, seeds, strict=True):
            t, self._tickets = self._tickets, self._tickets + 1
            self._open[t] = (r, len(ids), [None] * r.params.n)
            units.append(Unit(t, ids, list(range(r.params.n)), r.params, seed))
        self.decode.add(units)

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Drop the batch (its KV cache) and every request not returned yet."""
        self.decode.pending.clear()
        self.decode._reset()
        self._open.clear()
        if self.store is not None:
            self.store.clear()

    def step(self) -> list[tuple[GenerationRequest, GenerationResult]]:
        import torch

        try:
            with eval_mode(self.engine.model), torch.inference_mode():
                finished = self.decode.step()
        except Exception as exc:
            if is_oom(exc):
                raise LongshortError("out of memory in a continuous decode batch; lower the engine's batch_size "
                                     "or the requests in flight (e.g. max_active)") from exc
            raise
        out = []
        for t, j, c in finished:
            request, prompt_tokens, comps = self._open[t]
            comps[j] = c
            if all(x is not None for x in comps):
                del self._open[t]
                out.append((request, GenerationResult(completions=list(comps), prompt_tokens=prompt_tokens,
                                                      request=request)))
        return out
