"""OpenAI-compatible HTTP server over the collaborative solver (DESIGN §3, issue 6).

A thin layer, in the spirit of vLLM's `entrypoints/openai`: the server owns no reasoning logic,
it calls the same `longshort.dialogue.collab.solve_problems` that `longshort solve` and
`longshort eval` use.

Endpoints
- `POST /v1/chat/completions`
  - `model` = the pair's name (default `longshort`): the last user message is the question; the
    long and short models solve it together; the message content is the final turn (the answer
    with its `\\boxed{}`), and the response carries `usage` per role (`long_tokens`,
    `short_tokens`) and a `longshort` field with the transcript (`turns`), `final_answer`,
    `flags`, `finished`, `num_turns` and the size of the batch the request was solved in.
  - `model` = `long` or `short` (or the spec the engine was loaded from): plain single-model
    generation, so that `longshort solve --engine openai --base-url http://HOST:PORT/v1` (or any
    OpenAI client) can use the served models one role at a time. `continue_final_message=true`
    continues the last assistant message (vLLM's convention); `stop`, `n`, `seed`, `logprobs`
    are honoured and `stop_reason` names the stop string that ended a choice (as vLLM does).
  - `stream=true`: Server-Sent Events in the OpenAI `chat.completion.chunk` format. The solver
    works on whole turns batched across requests, so a pair streams one chunk per turn as
    content is known (the transcript turns go in a `longshort.turn` field of the chunk, the
    answer in `delta.content`), then a final chunk with `finish_reason`, `usage` and `longshort`.
- `POST /v1/completions`: raw-prompt generation with `model` = `long`/`short`.
- `GET /v1/models`, `GET /health` (with batching counters).

Batching: requests go into a queue; a background worker takes the first one, waits up to
`max_wait_ms` for more (up to `max_batch_size`), groups them by compatible settings and runs each
group through the solver (or the engine) in one call, on one worker thread so the event loop
keeps answering `/health` while the models generate. Oversized or malformed requests get a 4xx
JSON error (`{"error": {"message", "type", "param", "code"}}`) before they reach the queue; a
failing batch answers its requests with a 500 and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from longshort.dialogue.collab import CollabConfig, solve_problems
from longshort.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams

log = logging.getLogger(__name__)

ROLES = ("long", "short")


class ServeConfig(BaseModel):
    """Settings of `longshort serve` (limits, batching, the solver's defaults)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field("longshort", description="name clients use for the pair; 'longshort' "
                            "because the server answers with the two models together")
    max_batch_size: int = Field(16, ge=1, description="most requests solved in one batch; 16 keeps "
                                "a CPU batch of short prompts under a few seconds per turn")
    max_wait_ms: float = Field(20.0, ge=0, description="how long the worker waits for more requests "
                               "after the first before running a batch; 20 ms adds little latency")
    max_queue: int = Field(512, ge=1, description="pending requests beyond this get 503, so an "
                           "overloaded server sheds load instead of growing memory")
    max_messages: int = Field(64, ge=1, description="most chat messages per request (413 beyond)")
    max_chars: int = Field(32_000, ge=1, description="most characters over all messages (413 beyond); "
                           "about 8k tokens, far above a math problem")
    max_body_bytes: int = Field(1_000_000, ge=1, description="largest request body read (413 beyond)")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask for "
                                  "(400 beyond): per turn for the pair, per choice for one model")
    max_n: int = Field(8, ge=1, description="most choices (n) per single-model request")
    expose_single_models: bool = Field(True, description="serve 'long'/'short' as plain models, "
                                       "needed by `longshort solve --engine openai` against us")
    request_timeout_s: float = Field(600.0, gt=0, description="a request waiting longer gets 504; "
                                     "ten minutes covers a full dialogue on CPU")
    collab: CollabConfig = Field(default_factory=CollabConfig,
                                 description="the solver's defaults (turns, per-turn limits, sampling)")


# ----------------------------------------------------------------------------- request schemas


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[_ContentPart] | None = ""

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content part of type {part.type!r} is not supported (text only)")
            parts.append(part.text)
        return "".join(parts)


class _SamplingFields(BaseModel):
    """Fields common to chat and text completions (OpenAI names; unknown fields are ignored,
    as OpenAI clients send many optional ones)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    continue_final_message: bool = False
    add_generation_prompt: bool = True


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


# ----------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or None
    return APIError(400, f"invalid request: {loc or 'body'}: {first.get('msg')}", param=loc,
                    code="invalid_field")


# ----------------------------------------------------------------------------- batching


@dataclass
class _Job:
    kind: str                     # "pair" or a role ("long"/"short") for single-model generation
    key: tuple                    # jobs with equal (kind, key) run in one solver/engine call
    payload: Any                  # pair: (problem text, CollabConfig); role: GenerationRequest
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    batch_size: int = 0


@dataclass
class BatchStats:
    """Counters shown by /health: how much batching happened."""

    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
                "errors": self.errors, "recent_batch_sizes": self.batch_sizes[-20:]}


class Batcher:
    """Collects jobs for `max_wait_ms` (up to `max_batch_size`) and runs them together on one
    worker thread (the engines are not thread-safe, and one thread keeps the loop responsive)."""

    def __init__(self, long_engine: Engine, short_engine: Engine, config: ServeConfig):
        self.engines = {"long": long_engine, "short": short_engine}
        self.config = config
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longshort-gen")

    # -- lifecycle (called from the app's lifespan)
    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, kind: str, key: tuple, payload: Any) -> tuple[Any, int]:
        """Queue one job and wait for its result; returns (result, batch size it ran in)."""
        if self._queue is None:
            raise APIError(503, "server is starting", type="server_error", code="not_ready")
        if self._queue.qsize() >= self.config.max_queue:
            raise APIError(503, f"server busy: {self.config.max_queue} requests already queued; retry later",
                           type="server_error", code="queue_full")
        loop = asyncio.get_running_loop()
        job = _Job(kind, key, payload, loop.create_future(), loop)
        await self._queue.put(job)
        try:  # on timeout or client cancellation the future is cancelled: the worker skips it
            result = await asyncio.wait_for(job.future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"request timed out after {self.config.request_timeout_s:g} s",
                           type="server_error", code="timeout") from None
        return result, job.batch_size

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.config.max_wait_ms / 1000.0
            # poll rather than wait_for(queue.get()): a get cancelled by a timeout can lose an item
            while len(batch) < self.config.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())  # already waiting: take it for free
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.002))
            batch = [j for j in batch if not j.future.done()]  # client gone (timeout/cancel)
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            self.stats.batch_sizes.append(len(batch))
            del self.stats.batch_sizes[:-100]
            for job in batch:
                job.batch_size = len(batch)
            await loop.run_in_executor(self._executor, self._run_batch, batch)

    # -- runs on the worker thread
    def _run_batch(self, batch: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in batch:
            groups.setdefault((job.kind, job.key), []).append(job)
        for (kind, _key), jobs in groups.items():
            try:
                if kind == "pair":
                    results = self._solve_pair(jobs)
                else:
                    results = self.engines[kind].generate([j.payload for j in jobs])
            except Exception as exc:  # answer this group with 500, keep serving
                log.exception("batch of %d %s request(s) failed", len(jobs), kind)
                self.stats.errors += len(jobs)
                err = APIError(500, f"generation failed: {type(exc).__name__}: {exc}",
                               type="server_error", code="generation_failed")
                for job in jobs:
                    _resolve(job, exc=err)
                continue
            for job, res in zip(jobs, results, strict=True):
                _resolve(job, result=res)

    def _solve_pair(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        config: CollabConfig = jobs[0].payload[1]
        # ids from the question (not the batch position): the solver seeds each turn from the id,
        # so a seeded request gets the same answer whatever else shares its batch
        problems, seen = [], set()
        for job in jobs:
            rid = hashlib.sha1(job.payload[0].encode()).hexdigest()[:12]
            k = 0
            while f"{rid}~{k}" in seen:
                k += 1
            rid = f"{rid}~{k}"
            seen.add(rid)
            problems.append({"id": rid, "problem": job.payload[0]})
        records = solve_problems(problems, long_engine=self.engines["long"],
                                 short_engine=self.engines["short"], config=config, mode="collab")
        by_id = {str(r["id"]): r for r in records}
        missing = [p["id"] for p in problems if p["id"] not in by_id]
        if missing:
            raise RuntimeError(f"solver returned no record for {missing}")
        return [by_id[p["id"]] for p in problems]


def _resolve(job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    def _set() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(_set)
    except RuntimeError:  # the event loop is gone (server shutting down): nobody is waiting
        pass


# ----------------------------------------------------------------------------- app


_TAG_RE = re.compile(r"^\s*<(think|answer)>\s*|\s*</(think|answer|rethink)>\s*$")


def strip_tags(text: str) -> str:
    """The turn text without its opening/closing protocol tags."""
    return _TAG_RE.sub("", text).strip()


def _now() -> int:
    return int(time.time())


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(long_engine: Engine, short_engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving the pair (`config.model_name`) and, optionally, each model alone."""
    config = config or ServeConfig()
    batcher = Batcher(long_engine, short_engine, config)
    names: dict[str, str] = {config.model_name: "pair"}
    if config.expose_single_models:
        # the engine's spec names too, so an openai engine built with `--long SPEC` finds it
        for role, engine in (("short", short_engine), ("long", long_engine)):
            for alias in (getattr(engine, "model_name", "") or "", getattr(engine, "spec", "") or ""):
                if alias and alias not in names:
                    names[alias] = role
        names.update({"long": "long", "short": "short"})
        names[config.model_name] = "pair"
    started = time.time()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="longshort", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.config = config

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error",
                                     code="internal_error").body(), status_code=500)

    @app.exception_handler(404)
    async def _not_found(req: Request, _exc):
        return JSONResponse(APIError(404, f"no route {req.method} {req.url.path}; see GET /v1/models, "
                                     "POST /v1/chat/completions", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(req: Request, _exc):
        return JSONResponse(APIError(405, f"method {req.method} not allowed on {req.url.path}",
                                     code="method_not_allowed").body(), status_code=405)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started, 1),
                "queued": batcher.pending(), "batching": batcher.stats.as_dict()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = []
        for name, target in names.items():
            desc = ("long and short models solving together" if target == "pair"
                    else f"the {target}-thought model alone ({_engine_name(batcher.engines[target])})")
            data.append({"id": name, "object": "model", "created": int(started), "owned_by": "longshort",
                         "root": target, "description": desc})
        return {"object": "list", "data": data}

    async def _read(request: Request, schema: type[BaseModel]) -> Any:
        body = await request.body()
        if len(body) > config.max_body_bytes:
            raise APIError(413, f"request body of {len(body)} bytes exceeds the limit of "
                           f"{config.max_body_bytes}", code="body_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from None

    def _target(model: str | None) -> str:
        name = model or config.model_name
        if name not in names:
            raise APIError(404, f"model {name!r} not served; available: {', '.join(names)}",
                           param="model", code="model_not_found")
        return names[name]

    def _check_tokens(req: _SamplingFields) -> None:
        limit = req.token_limit()
        if limit is not None and limit > config.max_tokens_limit:
            raise APIError(400, f"max_tokens={limit} exceeds this server's limit of "
                           f"{config.max_tokens_limit}", param="max_tokens", code="max_tokens_too_large")
        if req.n > config.max_n:
            raise APIError(400, f"n={req.n} exceeds this server's limit of {config.max_n}",
                           param="n", code="n_too_large")

    def _check_size(texts: list[str], what: str) -> None:
        if len(texts) > config.max_messages:
            raise APIError(413, f"{len(texts)} {what} exceed the limit of {config.max_messages}",
                           param=what, code="too_many_messages")
        total = sum(len(t) for t in texts)
        if total > config.max_chars:
            raise APIError(413, f"{total} characters of input exceed the limit of {config.max_chars}",
                           param=what, code="input_too_long")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatCompletionRequest = await _read(request, ChatCompletionRequest)
        target = _target(req.model)
        try:
            texts = [m.text() for m in req.messages]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages", code="unsupported_content") from None
        _check_size(texts, "messages")
        _check_tokens(req)
        if target == "pair":
            return await _chat_pair(req, texts)
        return await _chat_single(req, texts, target)

    async def _chat_pair(req: ChatCompletionRequest, texts: list[str]):
        users = [t for m, t in zip(req.messages, texts, strict=True) if m.role == "user"]
        if req.messages[-1].role != "user" or not users[-1].strip():
            raise APIError(400, "the last message must be a non-empty user message: the question "
                           f"for {config.model_name!r}", param="messages", code="no_question")
        if req.n != 1:
            raise APIError(400, f"n={req.n}: model {config.model_name!r} answers one dialogue per "
                           "request (send several requests; they are batched)", param="n", code="n_unsupported")
        cfg = _collab_for(req)
        key = ("pair", cfg.model_dump_json())
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            job = batcher.submit("pair", key, (users[-1], cfg))
            return _stream(_pair_chunks(rid, job))
        record, bsz = await batcher.submit("pair", key, (users[-1], cfg))
        return _pair_response(rid, record, bsz)

    def _collab_for(req: _SamplingFields) -> CollabConfig:
        base = config.collab
        update: dict[str, Any] = {"samples": 1}
        limit = req.token_limit()
        if limit is not None:  # per turn, never above the configured per-role limit
            for fld in ("max_new_tokens_long", "max_new_tokens_short"):
                if hasattr(base, fld):
                    update[fld] = min(getattr(base, fld), limit)
        for fld in ("temperature", "top_p", "seed"):
            value = getattr(req, fld)
            if value is not None and hasattr(base, fld):
                update[fld] = value
        return base.model_copy(update=update)

    def _usage(record: dict[str, Any]) -> dict[str, int]:
        tokens = record.get("tokens") or {}
        prompt = record.get("prompt_tokens") or {}
        long_t, short_t = int(tokens.get("long", 0)), int(tokens.get("short", 0))
        completion = int(tokens.get("total", long_t + short_t))
        prompt_t = int(sum(int(v) for v in prompt.values())) if isinstance(prompt, dict) else int(prompt)
        return {"prompt_tokens": prompt_t, "completion_tokens": completion,
                "total_tokens": prompt_t + completion, "long_tokens": long_t, "short_tokens": short_t}

    def _answer_text(record: dict[str, Any]) -> str:
        turns = record.get("turns") or []
        if not turns:
            return ""
        last = turns[-1]
        return strip_tags(last.get("text", ""))

    def _extension(record: dict[str, Any], bsz: int) -> dict[str, Any]:
        return {"turns": [{k: t.get(k) for k in ("role", "text", "tokens", "finish_reason", "flags")}
                          for t in record.get("turns") or []],
                "final_answer": record.get("final_answer"), "finished": bool(record.get("finished")),
                "flags": list(record.get("flags") or []), "num_turns": record.get("num_turns",
                                                                                  len(record.get("turns") or [])),
                "batch_size": bsz}

    def _pair_response(rid: str, record: dict[str, Any], bsz: int) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion", "created": _now(), "model": config.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _answer_text(record)},
                             "finish_reason": "stop" if record.get("finished") else "length",
                             "logprobs": None}],
                "usage": _usage(record), "longshort": _extension(record, bsz)}

    async def _pair_chunks(rid: str, job) -> AsyncIterator[dict[str, Any]]:
        base = {"id": rid, "object": "chat.completion.chunk", "created": _now(), "model": config.model_name}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}
        record, bsz = await job
        turns = record.get("turns") or []
        for i, turn in enumerate(turns[:-1]):  # the transcript, turn by turn
            yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}],
                   "longshort": {"turn": {"index": i, **{k: turn.get(k) for k in
                                                         ("role", "text", "tokens", "finish_reason", "flags")}}}}
        answer = _answer_text(record)
        yield {**base, "choices": [{"index": 0, "delta": {"content": answer}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {},
                                    "finish_reason": "stop" if record.get("finished") else "length"}],
               "usage": _usage(record), "longshort": _extension(record, bsz)}

    # -- single model
    def _params(req: _SamplingFields, role: str) -> SamplingParams:
        limit = req.token_limit()
        base = config.collab
        default_max = getattr(base, f"max_new_tokens_{role}", 512)
        return SamplingParams(
            temperature=req.temperature if req.temperature is not None else 1.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            max_new_tokens=min(limit or default_max, config.max_tokens_limit),
            stop=list(req.stop or []), n=req.n, seed=req.seed, logprobs=bool(req.logprobs))

    async def _chat_single(req: ChatCompletionRequest, texts: list[str], role: str):
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": t}
                for m, t in zip(req.messages, texts, strict=True)]
        prefix = ""
        if req.continue_final_message:
            if msgs[-1]["role"] != "assistant":
                raise APIError(400, "continue_final_message needs the last message to be the "
                               "assistant's partial reply", param="messages", code="no_assistant_prefix")
            prefix = msgs.pop()["content"]
        if not msgs:
            raise APIError(400, "no messages before the assistant prefix", param="messages")
        gen = GenerationRequest(messages=msgs, assistant_prefix=prefix, params=_params(req, role))
        return await _single(req, gen, role, chat=True)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's token counter (the openai engine's `count_tokens` uses it)."""
        req: TokenizeRequest = await _read(request, TokenizeRequest)
        role = _target(req.model)
        if role == "pair":
            raise APIError(400, f"model {config.model_name!r} is two models with their own tokenizers; "
                           "tokenize with 'long' or 'short'", param="model")
        _check_size([req.prompt], "prompt")
        engine = batcher.engines[role]
        if req.add_special_tokens and getattr(engine, "tokenizer", None) is not None:
            ids = list(engine.tokenizer(req.prompt, add_special_tokens=True)["input_ids"])
            return {"count": len(ids), "tokens": ids}
        if hasattr(engine, "encode"):
            ids = engine.encode(req.prompt)
            return {"count": len(ids), "tokens": ids}
        return {"count": engine.count_tokens(req.prompt)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = await _read(request, CompletionRequest)
        target = _target(req.model)
        if target == "pair":
            raise APIError(400, f"model {config.model_name!r} answers chat requests only "
                           "(POST /v1/chat/completions); use 'long' or 'short' here", param="model")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request (requests are batched by the server)",
                           param="prompt")
        _check_size(prompts, "prompt")
        _check_tokens(req)
        gen = GenerationRequest(prompt=prompts[0], params=_params(req, target))
        return await _single(req, gen, target, chat=False)

    async def _single(req: _SamplingFields, gen: GenerationRequest, role: str, *, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = req.model or role
        key = (role, chat)
        if req.stream:
            return _stream(_single_chunks(rid, model, batcher.submit(role, key, gen), chat))
        result, _bsz = await batcher.submit(role, key, gen)
        return _single_response(rid, model, result, role, chat)

    def _logprobs(comp, role: str, chat: bool) -> dict[str, Any] | None:
        """Per-token logprobs in the chat (`content`) or text-completion (`token_logprobs`) format."""
        if comp.logprobs is None:
            return None
        tok = getattr(batcher.engines[role], "tokenizer", None)
        ids = comp.token_ids or []
        tokens = [tok.decode([ids[i]]) if tok is not None and i < len(ids) else "" for i in range(len(comp.logprobs))]
        if not chat:
            return {"tokens": tokens, "token_logprobs": list(comp.logprobs), "top_logprobs": None,
                    "text_offset": None}
        return {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                            for t, lp in zip(tokens, comp.logprobs, strict=True)]}

    def _single_response(rid: str, model: str, result: GenerationResult, role: str, chat: bool):
        choices = []
        for i, comp in enumerate(result.completions):
            choice: dict[str, Any] = {"index": i, "finish_reason": comp.finish_reason,
                                      "stop_reason": comp.stop, "logprobs": _logprobs(comp, role, chat)}
            if chat:
                choice["message"] = {"role": "assistant", "content": comp.text}
            else:
                choice["text"] = comp.text
            choices.append(choice)
        completion = sum(c.num_tokens for c in result.completions)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": _now(),
                "model": model, "choices": choices,
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
                          "total_tokens": result.prompt_tokens + completion}}

    async def _single_chunks(rid: str, model: str, job, chat: bool) -> AsyncIterator[dict[str, Any]]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": _now(), "model": model}
        result, _ = await job
        for i, comp in enumerate(result.completions):
            if chat:
                yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": comp.text},
                                            "finish_reason": None}]}
                yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": comp.finish_reason,
                                            "stop_reason": comp.stop}]}
            else:
                yield {**base, "choices": [{"index": i, "text": comp.text, "finish_reason": comp.finish_reason,
                                            "stop_reason": comp.stop}]}
        completion = sum(c.num_tokens for c in result.completions)
        yield {**base, "choices": [], "usage": {"prompt_tokens": result.prompt_tokens,
                                                "completion_tokens": completion,
                                                "total_tokens": result.prompt_tokens + completion}}

    return app


def _engine_name(engine: Engine) -> str:
    return f"{getattr(engine, 'name', 'engine')}:{getattr(engine, 'model_name', '') or '?'}"


def _stream(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """SSE: each chunk as `data: {...}`, keep-alive comments while the batch runs, `[DONE]` last.
    An error after the stream started goes out as a `data: {"error": ...}` event."""

    async def events() -> AsyncIterator[str]:
        it = chunks.__aiter__()
        pending: asyncio.Task | None = None
        try:
            while True:
                pending = asyncio.ensure_future(it.__anext__())
                while True:
                    done, _ = await asyncio.wait({pending}, timeout=10.0)
                    if done:
                        break
                    yield ": keep-alive\n\n"
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    break
                yield _sse(chunk)
        except APIError as exc:
            yield _sse(exc.body())
        except Exception as exc:  # never leave a client hanging without a reason
            log.exception("stream failed")
            yield _sse(APIError(500, f"{type(exc).__name__}: {exc}", type="server_error").body())
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def serve(long_engine: Engine, short_engine: Engine, config: ServeConfig | None = None, *,
          host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server with uvicorn until interrupted."""
    import uvicorn

    app = create_app(long_engine, short_engine, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
