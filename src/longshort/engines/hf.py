"""The transformers generation engine (default backend, DESIGN §3).

Our own decoding loop over a Hugging Face causal LM, because `model.generate()` cannot give each
row of one batch its own stop strings, seed, temperature and token limit. What it does:

- batches requests with left padding, longest prompts first, rows capped by `batch_size` and by
  a token budget (rows × (prompt + new tokens)); on out-of-memory the batch is halved and retried;
- shared prefixes are encoded once (`engines.prefill`): the n samples of a request, and any
  prompt that begins another prompt of the batch (the Monte Carlo prefixes of one trace, RL's
  group on one question) decode off that prompt's KV cache (`reuse_prefix=False` re-encodes
  every row's prompt, the baseline for benchmarks);
- per-row sampling (temperature, top-p, greedy when temperature is 0) with per-row seeds: the
  uniform number a row samples with comes from a counter-based hash of (seed, sample, step), so a
  seeded request gives the same completions whatever else is in its batch (up to floating-point
  differences between batch shapes, which only matter at near-ties);
- per-request stop strings (text cut at the earliest stop, the stop reported), EOS, per-row
  `max_new_tokens`, finish reasons, generated-token counts, optional per-token logprobs;
- finished rows leave the batch (the KV cache is compacted) so short answers do not pay for
  long ones;
- the decode loop is step-wise (`engines.session.DecodeSession`): `generate` runs it to the end
  per batch, and `open_session()` gives continuous batching: new requests join the running
  decode batch (their prompts prefilled apart, the KV caches merged left-padded) while finished
  rows leave it, so a caller that feeds requests as results come back (the solver's dialogues)
  keeps the batch full; with `prefix_cache_tokens` a session keeps finished rows' KV caches
  (`session.PrefixStore`), so a dialogue's next turn encodes only the text added since that
  role's last turn;
- optional fast path for GPUs (on by default with CUDA): a static KV cache and a
  `torch.compile`d decoding step, as transformers' own `cache_implementation="static"` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from longshort.engines.base import Completion, Engine, GenerationRequest, GenerationResult, GenerationSession
from longshort.engines.prefill import StartMemo, prefill, prefill_bucketed
from longshort.engines.probe import cache_kwarg
from longshort.engines.sampling import row_seed, row_uniform, sample_tokens  # noqa: F401 (re-exported)
from longshort.engines.session import ContinuousSession, DecodeSession, Unit, can_merge, eval_mode, is_oom
from longshort.errors import LongshortError

log = logging.getLogger(__name__)


class HFEngineConfig(BaseModel):
    """Settings of the transformers engine."""

    batch_size: int | None = Field(
        None, ge=1,
        description="Max rows (samples) decoded together; None = 64 on CPU, 256 on CUDA "
                    "(big enough to saturate the device, small enough for the 135M default model).")
    token_budget: int | None = Field(
        None, ge=1,
        description="Max rows × (prompt + new tokens) per batch; None = derived from the KV-cache size "
                    "per token and ~2 GB on CPU / half the free GPU memory, so long prompts get fewer rows.")
    reuse_prefix: bool = Field(
        True, description="Encode shared prefixes once: a prompt's KV cache serves its n samples and every "
                          "prompt of the batch that it begins (engines.prefill). False re-encodes each row's "
                          "prompt; only useful as a benchmark baseline.")
    prefix_cache_tokens: int | None = Field(
        0, ge=0,
        description="Continuous sessions (`open_session`) keep each finished row's KV cache, up to this many "
                    "tokens, for later prompts that begin with it (a dialogue's next turn of the same role "
                    "encodes only what was added since); None = half the token budget; 0 = off (the default: "
                    "on CPU with dialogues of 2-4 short turns it saved no measurable time, docs/engines.md, "
                    "while it holds memory). Also off with reuse_prefix False.")
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="Static KV cache + torch.compile'd decode step; auto = on when the model is on "
                            "CUDA (where it pays off), off on CPU (compilation costs more than it saves).")
    compile: bool | None = Field(
        None, description="torch.compile the decode step of the fast path; None = whenever the fast path "
                          "is on (False: static cache alone, for debugging on CPU).")
    compact_threshold: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Drop finished rows from the batch when at least this fraction of rows has finished "
                    "(0.25: compaction copies the cache, so do it in steps, not per row).")
    join_threshold: float = Field(
        0.125, ge=0.0,
        description="Continuous batching (`open_session`): requests waiting join the running batch once "
                    "their rows are at least this fraction of the live rows (0.125: a join copies the "
                    "cache, like compaction, so rows join in groups; an empty batch takes them at once).")
    device: str | None = Field(None, description="Device for a model loaded from a spec; None = cuda if present.")
    dtype: str | None = Field(None, description="Dtype for a model loaded from a spec (float32/fp32, bfloat16/bf16, "
                                                "auto = the checkpoint's); None = `models.resolve_precision('auto')`: "
                                                "bf16 where the device computes it natively (CUDA with bf16, CPUs "
                                                "with AMX-BF16/AVX512-BF16), else fp32. Exact reproducibility: fp32.")
    fp32_logits: bool = Field(True, description="With a bf16/fp16 model loaded from a spec, compute the LM head "
                                                "in fp32 (an fp32 copy of its weight), so logits and logprobs keep "
                                                "fp32 precision; the transformer body runs in the low precision.")


class _OOM(Exception):
    pass


# ----------------------------------------------------------------------------- engine


class HFEngine(Engine):
    """Batched generation with a transformers model. See the module docstring."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any = None, *, batch_size: int | None = None,
                 token_budget: int | None = None, reuse_prefix: bool = True, device: str | None = None,
                 dtype: Any = None, fast_path: str = "auto", compile: bool | None = None,
                 fp32_logits: bool = True, join_threshold: float | None = None,
                 prefix_cache_tokens: int | None = HFEngineConfig.model_fields["prefix_cache_tokens"].default,
                 config: HFEngineConfig | None = None):
        cfg = config or HFEngineConfig(
            batch_size=batch_size, token_budget=token_budget, reuse_prefix=reuse_prefix,
            device=device, dtype=None if dtype is None else str(dtype), fast_path=fast_path,
            compile=compile, fp32_logits=fp32_logits, prefix_cache_tokens=prefix_cache_tokens,
            **({} if join_threshold is None else {"join_threshold": join_threshold}))
        self.config = cfg
        self.spec: str | None = model if isinstance(model, str) else None
        if isinstance(model, str):
            from longshort.models import fp32_lm_head, load_model

            self.model_name = model
            self.model, tok = load_model(model, dtype=cfg.dtype, device=cfg.device)
            self.tokenizer = tokenizer or tok
            if cfg.fp32_logits:
                fp32_lm_head(self.model)
        else:
            if tokenizer is None:
                raise LongshortError("HFEngine(model) with an in-memory model needs its tokenizer")
            self.model, self.tokenizer = model, tokenizer
            self.model_name = str(getattr(model, "name_or_path", "") or type(model).__name__)
            if cfg.device is not None:
                self.model.to(cfg.device)
        from longshort.models import _finish_tokenizer

        _finish_tokenizer(self.tokenizer)
        self.device = next(self.model.parameters()).device
        self._cache_kw = cache_kwarg(self.model)  # transformers 5 renamed `past_key_values` to `cache`
        self._vocab_masks: dict[str, list[bool]] = {}
        self._eos = self._eos_ids()
        self._specials = sorted((t for t in self.tokenizer.all_special_tokens if t), key=len, reverse=True)
        self._rows_cap = cfg.batch_size or (256 if self.device.type == "cuda" else 64)
        self._budget = cfg.token_budget or self._default_budget()
        store = cfg.prefix_cache_tokens
        self._store_tokens = 0 if not cfg.reuse_prefix else (self._budget // 2 if store is None else store)
        self._compiled = None
        self._mergeable: bool | None = None

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> HFEngine:
        """Wrap an in-memory model (e.g. the policy being trained) without copying it."""
        return cls(model, tokenizer, **kwargs)

    # -- helpers ----------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if src is None:
                continue
            ids.update(src if isinstance(src, (list, tuple)) else [src])
        return ids

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        layers = getattr(c, "num_hidden_layers", 24)
        heads = getattr(c, "num_key_value_heads", None) or getattr(c, "num_attention_heads", 16)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        elt = next(self.model.parameters()).element_size()
        return 2 * layers * heads * head_dim * elt

    def _default_budget(self) -> int:
        import torch

        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            mem = free // 2
        else:
            mem = 2 << 30
        return max(4096, mem // self._kv_bytes_per_token())

    @property
    def max_context(self) -> int | None:
        """The model's `max_position_embeddings`, else the tokenizer's `model_max_length` when it is
        a real limit (transformers puts ~1e30 there when unknown), else None."""
        return self._context_length()

    def _context_length(self) -> int | None:
        c = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        ctx = getattr(c, "max_position_embeddings", None)
        if ctx:
            return int(ctx)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return int(tok_max) if isinstance(tok_max, int) and 0 < tok_max < 10**8 else None

    @property
    def fast(self) -> bool:
        mode = self.config.fast_path
        return mode == "on" or (mode == "auto" and self.device.type == "cuda")

    def render(self, request: GenerationRequest) -> str:
        """The exact text the model is given: `base.render_chat` (chat template + generation prompt
        + assistant prefix), or the raw prompt (+ prefix), or the token ids decoded."""
        from longshort.engines.base import render_request

        return render_request(self.tokenizer, request)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def _clean(self, text: str) -> str:
        for s in self._specials:
            text = text.replace(s, "")
        return text

    # -- public API -------------------------------------------------------------------------

    def open_session(self) -> GenerationSession:
        """Continuous batching (`engines.session.ContinuousSession`); on the static-cache fast path,
        or with a model whose cache cannot be merged (sliding-window layers), the base class's
        session: one `generate` call per step."""
        if self.fast or not self._can_merge():
            return super().open_session()
        return ContinuousSession(self)

    def _prepare(self, requests: list[GenerationRequest]) -> tuple[list[list[int]], list[int]]:
        """Check the requests; their prompt token ids and seeds."""
        import torch

        for i, r in enumerate(requests):
            p = r.params
            if p.n < 1 or p.max_new_tokens < 1:
                raise LongshortError(f"request {i}: n and max_new_tokens must be >= 1 (got {p.n}, {p.max_new_tokens})")
            if p.temperature < 0 or not 0 < p.top_p <= 1:
                raise LongshortError(f"request {i}: need temperature >= 0 and 0 < top_p <= 1")
        prompts = [list(r.prompt_token_ids) if r.prompt_token_ids is not None else self.encode(self.render(r))
                   for r in requests]
        context = self._context_length()
        for i, ids in enumerate(prompts):
            if not ids:
                raise LongshortError(f"request {i}: empty prompt")
            if context and len(ids) >= context:
                raise LongshortError(f"request {i}: the prompt has {len(ids)} tokens but the model's context "
                                     f"is {context} tokens; shorten it")
        # Seeds: the request's own, else one drawn from torch's RNG (so torch.manual_seed governs it).
        seeds = [r.params.seed if r.params.seed is not None else int(torch.randint(0, 2**62, (1,)))
                 for r in requests]
        return prompts, seeds

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False
                 ) -> list[GenerationResult]:
        import torch
        from tqdm.auto import tqdm

        requests = list(requests)
        prompts, seeds = self._prepare(requests)
        out: list[list[Completion | None]] = [[None] * r.params.n for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -(len(prompts[i]) + requests[i].params.max_new_tokens))
        pending = [Unit(i, prompts[i], list(range(requests[i].params.n)), requests[i].params, seeds[i])
                   for i in order]
        total = sum(r.params.n for r in requests)
        bar = tqdm(total=total, disable=not progress, desc="generate", unit="sample", leave=False)
        # a policy being trained: no dropout while sampling
        with eval_mode(self.model), torch.inference_mode(), bar:
            while pending:
                batch, pending = self._take_batch(pending)
                try:
                    self._run_batch(batch, out)
                except _OOM:
                    rows = sum(len(u.samples) for u in batch)
                    if rows <= 1:
                        raise LongshortError("out of memory generating a single sample; use a smaller "
                                             "model, shorter prompts or max_new_tokens") from None
                    self._rows_cap = max(1, rows // 2)
                    self._budget = max(1, self._budget // 2)
                    log.warning("out of memory with %d rows; retrying with at most %d", rows, self._rows_cap)
                    pending = batch + pending
                    continue
                bar.update(sum(len(u.samples) for u in batch))
        return [GenerationResult(completions=list(out[i]), prompt_tokens=len(prompts[i]), request=r)
                for i, r in enumerate(requests)]

    def _take_batch(self, pending: list[Unit]) -> tuple[list[Unit], list[Unit]]:
        """Greedy packing under the row cap and the token budget; splits a request's samples
        across batches when needed. Always takes at least one row."""
        batch: list[Unit] = []
        rows, longest = 0, 0
        rest = list(pending)
        while rest:
            u = rest[0]
            span = len(u.ids) + u.params.max_new_tokens
            new_longest = max(longest, span)
            room_rows = self._rows_cap - rows
            room_budget = self._budget // new_longest - rows
            room = min(room_rows, room_budget)
            if room <= 0:
                if batch:
                    break
                room = 1
            if room >= len(u.samples):
                batch.append(rest.pop(0))
                rows += len(u.samples)
            else:
                batch.append(replace(u, samples=u.samples[:room]))
                rest[0] = replace(u, samples=u.samples[room:])
                rows += room
            longest = new_longest
        return batch, rest

    def _can_merge(self) -> bool:
        """Whether this model's KV caches can be left-padded and joined (`session.can_merge`, cached)."""
        if self._mergeable is None:
            self._mergeable = can_merge(self.model)
        return self._mergeable

    def _forward(self, cache: Any, **kw: Any) -> Any:
        return self.model(**kw, **{self._cache_kw: cache}, use_cache=True)

    def _prefill(self, cache: Any, prompts: list[list[int]], row_prompts: list[int],
                 memo: StartMemo | None = None) -> tuple[Any, Any, Any]:
        """`engines.prefill.prefill` of new decode rows into `cache` (the sessions' one call of it), in
        length buckets (`prefill_bucketed`) where the model's caches can be joined; `memo`: the
        session's shared starts already encoded."""
        pad = self.tokenizer.pad_token_id
        if not self.config.reuse_prefix:
            return prefill(self._forward, cache, prompts, row_prompts, pad=pad, device=self.device, reuse=False)
        if not self._can_merge():
            return prefill(self._forward, cache, prompts, row_prompts, pad=pad, device=self.device, memo=memo)
        from transformers import DynamicCache

        return prefill_bucketed(self._forward, cache, lambda: DynamicCache(config=self.model.config), prompts,
                                row_prompts, pad=pad, device=self.device, memo=memo)

    def _run_batch(self, units: list[Unit], out: list[list[Completion | None]]) -> None:
        try:
            self._decode(units, out)
        except Exception as exc:
            if is_oom(exc):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise _OOM() from exc
            raise

    def _decode(self, units: list[Unit], out: list[list[Completion | None]]) -> None:
        """One packed batch decoded to the end: a `DecodeSession` all of whose rows join at once."""
        session = DecodeSession(self, static=self.fast)
        session.add(units)
        while session:
            for q, j, c in session.step():
                out[q][j] = c

    def _finished(self, row_toks: list[int], stops: list[str], window: int, max_new: int
                  ) -> Completion | None:
        """The row's Completion if its last token ended it (EOS, a stop string, the length limit)."""
        finish, stop_hit, text = None, None, None
        if row_toks[-1] in self._eos:
            finish = "stop"
            text = self._clean(self.tokenizer.decode(row_toks[:-1], skip_special_tokens=False))
        elif stops:
            tail = self.tokenizer.decode(row_toks[-window:], skip_special_tokens=False)
            if any(s in tail for s in stops):
                full = self.tokenizer.decode(row_toks, skip_special_tokens=False)
                at, stop_hit = min((full.find(s), s) for s in stops if s in full)
                finish, text = "stop", self._clean(full[:at])
        if finish is None and len(row_toks) >= max_new:
            finish = "length"
            text = self._clean(self.tokenizer.decode(row_toks, skip_special_tokens=False))
        if finish is None:
            return None
        return Completion(text=text, num_tokens=len(row_toks), finish_reason=finish, stop=stop_hit,
                          token_ids=list(row_toks))

    # -- static-cache fast path -------------------------------------------------------------

    def _to_static(self, dyn: Any, mask: Any, rows: int, max_len: int) -> tuple[Any, Any]:
        import torch
        from transformers import StaticCache

        max_len = int(math.ceil(max_len / 128) * 128)  # bucket, so similar batches reuse compiled graphs
        static = StaticCache(config=self.model.config, max_cache_len=max_len)
        for li, layer in enumerate(dyn.layers):
            static.update(layer.keys, layer.values, li)
        full = torch.zeros((rows, max_len), dtype=mask.dtype, device=mask.device)
        full[:, :mask.shape[1]] = mask
        return static, full

    def _static_step(self, cache: Any, ids: Any, mask: Any, pos: Any) -> Any:
        import torch

        fn = self.model.forward
        if self.config.compile is not False:
            if self._compiled is None:
                # what transformers' generate() does for cache_implementation="static" on GPUs
                self._compiled = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=False,
                                               dynamic=False)
            fn = self._compiled
        out = fn(input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache}, use_cache=True)
        return out.logits[:, -1, :].clone()

    # -- probability probes (the `forced` and `ablation` importance estimators) ------------

    def branch_logprobs(self, request: GenerationRequest, segments: Sequence[str], stems: Sequence[str],
                        targets: Sequence[str], *, max_context: int | None = None) -> list[Any]:
        """log P(target | rendered request + segments[:i] + stem) for every prefix i, stem and
        target, the text encoded once and the probes branched off its KV cache (`engines/probe.py`)."""
        from longshort.engines.probe import branch_logprobs

        return branch_logprobs(self.model, self.tokenizer, self.render(request), segments, stems, targets,
                               max_context=max_context or self._context_length(), cache_kw=self._cache_kw)

    def ablation_logprobs(self, request: GenerationRequest, segments: Sequence[str], tail: str = "", *,
                          window: int | None = 1024, max_context: int | None = None,
                          count_pattern: str | None = None) -> list[Any]:
        """Per segment, log P(the text after it) with and without it, the text encoded once and each
        ablation branched off its KV cache (`engines/probe.ablation_logprobs`); with `count_pattern`
        (a regular expression) only the rest tokens whose text matches it count (`vocab_mask`)."""
        from longshort.engines.probe import ablation_logprobs

        counted = None if count_pattern is None else self.vocab_mask(count_pattern)
        return ablation_logprobs(self.model, self.tokenizer, self.render(request), segments, tail, window=window,
                                 max_context=max_context or self._context_length(), cache_kw=self._cache_kw,
                                 counted=counted)

    def vocab_mask(self, pattern: str) -> list[bool]:
        """`engines/probe.vocab_mask` of this tokenizer, computed once per pattern."""
        from longshort.engines.probe import vocab_mask

        if pattern not in self._vocab_masks:
            self._vocab_masks[pattern] = vocab_mask(self.tokenizer, pattern)
        return self._vocab_masks[pattern]
