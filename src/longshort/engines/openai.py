"""Engine for any OpenAI-compatible HTTP server (`vllm serve`, SGLang, `longshort serve`, ...).

Chat requests: with a local tokenizer for the served model (`tokenizer=<model spec>`), the
engine renders them itself with `engines.base.render_chat`, the rendering of the transformers
and vLLM engines and of the SFT examples (the template's own trailing ``<think>`` cut, the
assistant prefix appended as text), and sends that text to `/completions` with
`add_special_tokens: false` (the text holds the template's BOS; vLLM would add a second one).
Without a tokenizer (or with `local_render=False`) they go to `/chat/completions`, rendered by
the server's template, and a request with an `assistant_prefix` is sent as a final assistant
message with `continue_final_message: true, add_generation_prompt: false` (vLLM's convention,
which our own server follows). That route has the limits of the server's template: transformers
(and so `vllm serve`) refuse a final assistant message that the template rewrites (DeepSeek-R1
distills and Qwen3 strip reasoning from assistant messages: "final message does not appear in
the chat"), and a template that opens ``<think>`` itself (R1 distills, QwQ) writes it into a
request without a prefix, where the turn's text does not hold it. Raw prompts and token ids go
to `/completions` as they are.

Robustness: per-request timeouts; retries with exponential backoff (and jitter) on connection
errors, timeouts, 429 and 5xx; a `LongshortError` naming the URL when the server cannot be
reached, or with the server's message on a 4xx. Requests run concurrently on a thread pool, so
the server can batch them. Prefix reuse across the n samples is the server's job (vLLM's prefix
caching does it).

Token accounting: `usage.prompt_tokens` → `GenerationResult.prompt_tokens`. Per-completion token
counts are exact when n = 1 (`usage.completion_tokens`); for n > 1 the engine asks for logprobs
and counts them (servers do not report per-choice usage); if the server ignores that, the total
is split evenly (logged as approximate).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel, Field

from longshort.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    render_chat,
    render_request,
)
from longshort.errors import LongshortError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIEngineConfig(BaseModel):
    """Settings of the OpenAI-compatible HTTP engine."""

    base_url: str = Field(..., description="Server URL, e.g. http://127.0.0.1:8000/v1 ('/v1' is added when "
                                           "the URL has no path).")
    api_key: str | None = Field(None, description="Bearer token; None = $OPENAI_API_KEY, else 'EMPTY' "
                                                  "(what vLLM accepts when it runs without a key).")
    timeout: float = Field(300.0, gt=0, description="Seconds to wait for one response; 300 because a long "
                                                    "reasoning turn on a busy server can take minutes.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection; short, so a "
                                                          "wrong URL fails fast.")
    max_retries: int = Field(3, ge=0, description="Retries after a connection error, timeout, 429 or 5xx; "
                                                  "3 rides over a server restart without hiding a dead one.")
    backoff: float = Field(0.5, ge=0, description="First retry delay in seconds, doubled each retry "
                                                  "(plus up to 25% jitter so clients do not retry in lockstep).")
    max_backoff: float = Field(8.0, ge=0, description="Cap on one retry delay in seconds.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once; 16 lets a server batch "
                                                   "them without queueing thousands of sockets.")
    max_context: int | None = Field(None, ge=1, description="The served model's context length in tokens "
                                                            "(`vllm serve --max-model-len`); None = unknown, "
                                                            "context checks are skipped.")
    tokenizer: str | None = Field(None, description="Spec of the served model (or of one with its tokenizer and "
                                                    "chat template), loaded locally by load_tokenizer: chat "
                                                    "requests are rendered here (render_chat) and sent to "
                                                    "/completions, and tokens are counted here; None = chat "
                                                    "requests go to /chat/completions and count_tokens asks "
                                                    "the server's /tokenize (vLLM).")
    local_render: bool = Field(True, description="With `tokenizer`: render chat requests locally and send them "
                                                 "to /completions; False keeps them on /chat/completions (the "
                                                 "server's template; for servers without /completions).")


def normalize_base_url(url: str) -> str:
    from urllib.parse import urlparse

    url = (url or "").strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise LongshortError(f"invalid base URL {url!r}: expected e.g. http://127.0.0.1:8000/v1")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


class OpenAIEngine(Engine):
    """Generation through an OpenAI-compatible server; `model` is the served model's name."""

    name = "openai"
    structured_output = True  # response_format json_schema (OpenAI, vLLM's server)

    def __init__(self, model: str, *, base_url: str | None = None, config: OpenAIEngineConfig | None = None,
                 **kwargs: Any):
        import httpx

        if config is None:
            config = OpenAIEngineConfig(base_url=base_url or "", **kwargs)
        elif base_url:
            config = config.model_copy(update={"base_url": base_url})
        self.config = config
        self.model_name = model
        self.base_url = normalize_base_url(config.base_url)
        key = config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
            headers={"Authorization": f"Bearer {key}"},
        )
        self._tokenizer = None
        self._tok_lock = threading.Lock()

    # -- HTTP -------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}{path}"
        last: str = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = min(self.config.max_backoff, self.config.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (1 + 0.25 * random.random()))
            try:
                resp = self._client.post(url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise LongshortError(f"server at {url} rejected the request: HTTP {resp.status_code}: "
                                     f"{_error_message(resp)}")
            try:
                return resp.json()
            except ValueError as exc:
                raise LongshortError(f"server at {url} answered with invalid JSON: {resp.text[:200]!r}") from exc
        raise LongshortError(f"cannot get a response from the OpenAI-compatible server at {url} after "
                             f"{self.config.max_retries + 1} attempts: {last}")

    # -- requests ---------------------------------------------------------------------------

    def _body(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        p = req.params
        body: dict[str, Any] = {"model": self.model_name, "max_tokens": p.max_new_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, "n": p.n}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        want_lp = p.logprobs or p.n > 1  # logprobs give exact per-choice token counts
        if p.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": p.json_schema, "strict": True}}
        tok = self._chat_tokenizer() if req.messages is not None else None
        if req.messages is not None and tok is None:
            messages = [dict(m) for m in req.messages]
            if req.assistant_prefix:
                messages.append({"role": "assistant", "content": req.assistant_prefix})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
            if want_lp:
                body["logprobs"] = True
            return "/chat/completions", body
        if tok is not None:  # rendered here, as the other engines render it; the text holds any BOS
            body["prompt"] = render_chat(tok, req.messages, req.assistant_prefix)
            body["add_special_tokens"] = False
        elif req.prompt_token_ids is not None:  # the OpenAI completions API's token-array prompt (vLLM)
            body["prompt"] = list(req.prompt_token_ids)
        else:
            body["prompt"] = req.prompt + req.assistant_prefix
        if want_lp:
            body["logprobs"] = 1
        return "/completions", body

    def _one(self, req: GenerationRequest) -> GenerationResult:
        path, body = self._body(req)
        data = self._post(path, body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != req.params.n:
            raise LongshortError(f"server at {self.base_url}{path} returned {len(choices)} choices, "
                                 f"expected {req.params.n}")
        usage = data.get("usage") or {}
        total = usage.get("completion_tokens")
        completions = []
        for ch in choices:
            text = (ch.get("message") or {}).get("content") if "message" in ch else ch.get("text")
            lps = _parse_logprobs(ch.get("logprobs"))
            if lps is not None:
                count = len(lps)
            elif total is not None:
                count = total // len(choices) + (1 if ch is choices[0] and total % len(choices) else 0)
                if len(choices) > 1:
                    log.info("server gave no per-choice token counts; splitting usage evenly")
            elif self.config.tokenizer is not None:
                count = self.count_tokens(text or "")  # no usage from the server: count locally
            else:
                count = 0
            stop = ch.get("stop_reason")
            stop = stop if isinstance(stop, str) and stop in (req.params.stop or []) else None
            completions.append(Completion(
                text=text or "", num_tokens=count, finish_reason=_finish(ch.get("finish_reason")), stop=stop,
                logprobs=lps if req.params.logprobs else None))
        if len(completions) == 1 and total is not None:
            completions[0].num_tokens = total
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = 0
        return GenerationResult(completions=completions, prompt_tokens=int(prompt_tokens), request=req)

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False
                 ) -> list[GenerationResult]:
        from tqdm.auto import tqdm

        requests = list(requests)
        for i, r in enumerate(requests):
            if r.params.n < 1 or r.params.max_new_tokens < 1:
                raise LongshortError(f"request {i}: n and max_new_tokens must be >= 1")
        results: list[GenerationResult | None] = [None] * len(requests)
        if not requests:
            return []
        workers = min(self.config.concurrency, len(requests))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai")
        bar = tqdm(total=sum(r.params.n for r in requests), disable=not progress, desc="generate",
                   unit="sample", leave=False)
        ok = False
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(requests[futures[fut]].params.n)
            ok = True
        finally:
            bar.close()
            # on failure, do not wait for the other requests' retries: cancel what has not started
            pool.shutdown(wait=ok, cancel_futures=not ok)
        return results  # type: ignore[return-value]

    # -- tokens -----------------------------------------------------------------------------

    def _local_tokenizer(self) -> Any:
        if self.config.tokenizer is None:
            return None
        with self._tok_lock:
            if self._tokenizer is None:
                from longshort.models import load_tokenizer

                self._tokenizer = load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def _chat_tokenizer(self) -> Any:
        """The local tokenizer that renders chat requests, or None (they go to /chat/completions)."""
        return self._local_tokenizer() if self.config.local_render else None

    @property
    def max_context(self) -> int | None:
        return self.config.max_context

    def count_tokens(self, text: str) -> int:
        tok = self._local_tokenizer()
        if tok is not None:
            return len(tok(text, add_special_tokens=False)["input_ids"])
        root = self.base_url.removesuffix("/v1")
        try:
            resp = self._client.post(f"{root}/tokenize", json={"model": self.model_name, "prompt": text,
                                                                "add_special_tokens": False})
            if resp.status_code == 200 and "count" in resp.json():
                return int(resp.json()["count"])
        except Exception:  # noqa: BLE001 - any failure means: not available
            pass
        raise LongshortError(f"cannot count tokens for model {self.model_name!r}: the server at {root} has no "
                             f"/tokenize endpoint; pass tokenizer=<model spec> to the openai engine")

    def render(self, request: GenerationRequest) -> str:
        """The text the model is given for `request` (needs `tokenizer=`): for a chat request the
        `render_chat` text this engine sends, or with ``local_render=False`` what the server's
        template makes of it (generation prompt + prefix, the template's own opening tag kept)."""
        tok = self._local_tokenizer()
        if tok is None:
            raise LongshortError("render() with the openai engine needs tokenizer=<model spec>")
        if request.messages is None or self.config.local_render:
            return render_request(tok, request)
        return tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False) + \
            request.assistant_prefix

    def close(self) -> None:
        self._client.close()


def _finish(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _parse_logprobs(lp: Any) -> list[float] | None:
    """Chat format {"content": [{"logprob": x}, ...]} or completions format {"token_logprobs": [...]}."""
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):
        return [float(item.get("logprob", 0.0)) for item in lp["content"]]
    if isinstance(lp.get("token_logprobs"), list):
        return [float(x) if x is not None else 0.0 for x in lp["token_logprobs"]]
    return None


def _error_message(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return (resp.text or "").strip().splitlines()[0][:200] if resp.text else resp.reason_phrase
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]
