"""The serving logic as methods of one object (`Handlers`), testable without HTTP.

Each public method takes a validated request model (see `serve.protocol`) and returns a
response body (or a streaming response); it raises `APIError` for anything the client must fix.
The routes in `serve.app` only read the body and call these methods.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from longshort.dialogue.collab import CollabConfig, turn_limit
from longshort.dialogue.protocol import render_input
from longshort.engines.base import Engine, GenerationRequest
from longshort.serve import responses
from longshort.serve.batcher import Batcher
from longshort.serve.config import ServeConfig
from longshort.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    TokenizeRequest,
)
from longshort.serve.sampling import dialogue_budget, pair_config, single_budget, single_params


def _engine_name(engine: Engine) -> str:
    return f"{getattr(engine, 'name', 'engine')}:{getattr(engine, 'model_name', '') or '?'}"


def model_context(engine: Engine) -> int | None:
    """The engine's context length in tokens (`Engine.max_context`), None when unknown."""
    ctx = getattr(engine, "max_context", None)  # absent on engines older than the property
    return ctx if isinstance(ctx, int) and ctx > 0 else None


def prompt_tokens(engine: Engine, gen: GenerationRequest) -> int:
    """Tokens of the exact text the engine will read for `gen` (its chat template included)."""
    render = getattr(engine, "render", None)
    if render is not None:
        text = render(gen)
    else:  # no template known: the contents alone (a lower bound)
        text = "\n".join(m["content"] for m in gen.messages or []) + (gen.prompt or "") + gen.assistant_prefix
    return engine.count_tokens(text)


class Handlers:
    """Chat and text completions, tokenize, models and health over one `Batcher`."""

    def __init__(self, long_engine: Engine, short_engine: Engine, config: ServeConfig):
        self.config = config
        self.batcher = Batcher(long_engine, short_engine, config)
        self.started = time.time()
        names: dict[str, str] = {config.model_name: "pair"}
        if config.expose_single_models:
            # the engine's spec names too, so an openai engine built with `--long SPEC` finds it
            for role, engine in (("short", short_engine), ("long", long_engine)):
                for alias in (getattr(engine, "model_name", "") or "", getattr(engine, "spec", "") or ""):
                    if alias and alias not in names:
                        names[alias] = role
            names.update({"long": "long", "short": "short"})
            names[config.model_name] = "pair"
        self.names = names

    # -- checks shared by the endpoints
    def target(self, model: str | None) -> str:
        """'pair', 'long' or 'short' for a request's `model` (404 if not served)."""
        name = model or self.config.model_name
        if name not in self.names:
            raise APIError(404, f"model {name!r} not served; available: {', '.join(self.names)}",
                           param="model", code="model_not_found")
        return self.names[name]

    def check_tokens(self, req: SamplingFields) -> None:
        limit = req.token_limit()
        if limit is not None and limit > self.config.max_tokens_limit:
            raise APIError(400, f"max_tokens={limit} exceeds this server's limit of "
                           f"{self.config.max_tokens_limit}", param="max_tokens", code="max_tokens_too_large")
        if req.n > self.config.max_n:
            raise APIError(400, f"n={req.n} exceeds this server's limit of {self.config.max_n}",
                           param="n", code="n_too_large")

    def check_budget(self, budget: int, what: str) -> None:
        cap = self.config.request_token_cap()
        if budget > cap:
            raise APIError(400, f"this request may generate up to {budget} tokens ({what}), over this "
                           f"server's limit of {cap} per request; lower max_tokens or n",
                           param="max_tokens", code="request_too_large")

    async def check_context(self, role: str, gen: GenerationRequest, new_tokens: int, *,
                            explicit: bool, what: str) -> int | None:
        """400 when the prompt plus `new_tokens` does not fit the `role` model's context.

        Returns a smaller token limit when `new_tokens` was the server's default (not asked for
        by the client) and only the default does not fit, else None."""
        engine = self.batcher.engines[role]
        ctx = model_context(engine)
        if ctx is None:
            return None
        prompt = await asyncio.to_thread(prompt_tokens, engine, gen)
        if prompt + new_tokens <= ctx:
            return None
        if not explicit and prompt < ctx:
            return ctx - prompt
        raise APIError(400, f"the {role} model's context is {ctx} tokens, but {what} takes {prompt} "
                       f"tokens and up to {new_tokens} more are to be generated; shorten the input "
                       "or lower max_tokens", param="messages", code="context_length_exceeded")

    async def check_pair_fits(self, question: str, cfg: CollabConfig) -> None:
        """The first exchange of the dialogue must fit each model's context: the long model reads
        the question and writes a turn; the short model reads both and writes its turn."""
        for role, new in (("long", turn_limit("long", cfg)),
                          ("short", turn_limit("long", cfg) + turn_limit("short", cfg))):
            messages, prefix = render_input(role, question, open_tag=cfg.force_open_tag)
            await self.check_context(role, GenerationRequest(messages=messages, assistant_prefix=prefix), new,
                                     explicit=True, what="the question with its role prompt")

    def check_size(self, texts: list[str], what: str) -> None:
        if len(texts) > self.config.max_messages:
            raise APIError(413, f"{len(texts)} {what} exceed the limit of {self.config.max_messages}",
                           param=what, code="too_many_messages")
        total = sum(len(t) for t in texts)
        if total > self.config.max_chars:
            raise APIError(413, f"{total} characters of input exceed the limit of {self.config.max_chars}",
                           param=what, code="input_too_long")

    # -- endpoints
    def health(self) -> dict[str, Any]:
        """Liveness plus load: queue depth and busy state per generation lane, batching counters."""
        lanes = {name: lane.state() for name, lane in self.batcher.lanes.items()}
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1),
                "busy": self.batcher.busy(), "queued": self.batcher.pending(), "lanes": lanes,
                "limits": {"max_request_tokens": self.config.request_token_cap(),
                           "express_max_tokens": self.config.express_max_tokens if "express" in lanes else 0,
                           "max_queue": self.config.max_queue},
                "batching": self.batcher.stats.as_dict()}

    def metrics(self) -> str:
        """The same numbers in Prometheus' text format (GET /metrics)."""
        stats = self.batcher.stats.as_dict()
        lines = []
        for name, kind, help_, value in (
                ("requests_total", "counter", "requests run", stats["requests"]),
                ("batches_total", "counter", "batches run", stats["batches"]),
                ("errors_total", "counter", "requests answered with a generation error", stats["errors"]),
                ("retried_alone_total", "counter", "requests retried alone after their batch failed",
                 stats["retried_alone"])):
            lines += [f"# HELP longshort_{name} {help_}", f"# TYPE longshort_{name} {kind}",
                      f"longshort_{name} {value}"]
        lanes = {name: lane.state() for name, lane in self.batcher.lanes.items()}
        for key, kind, help_ in (("queued", "gauge", "requests waiting"),
                                 ("running", "gauge", "requests generating"),
                                 ("running_tokens", "gauge", "token budget of the requests generating"),
                                 ("busy_seconds_total", "counter", "seconds spent generating")):
            lines += [f"# HELP longshort_lane_{key} {help_}", f"# TYPE longshort_lane_{key} {kind}"]
            lines += [f'longshort_lane_{key}{{lane="{name}"}} {st[key]}' for name, st in lanes.items()]
        return "\n".join(lines) + "\n"

    def models(self) -> dict[str, Any]:
        data = []
        for name, target in self.names.items():
            desc = ("long and short models solving together" if target == "pair"
                    else f"the {target}-thought model alone ({_engine_name(self.batcher.engines[target])})")
            data.append({"id": name, "object": "model", "created": int(self.started), "owned_by": "longshort",
                         "root": target, "description": desc})
        return {"object": "list", "data": data}

    async def chat(self, req: ChatCompletionRequest):
        target = self.target(req.model)
        try:
            texts = [m.text() for m in req.messages]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages", code="unsupported_content") from None
        self.check_size(texts, "messages")
        self.check_tokens(req)
        if target == "pair":
            return await self._chat_pair(req, texts)
        return await self._chat_single(req, texts, target)

    async def _chat_pair(self, req: ChatCompletionRequest, texts: list[str]):
        name = self.config.model_name
        users = [t for m, t in zip(req.messages, texts, strict=True) if m.role == "user"]
        if req.messages[-1].role != "user" or not users[-1].strip():
            raise APIError(400, "the last message must be a non-empty user message: the question "
                           f"for {name!r}", param="messages", code="no_question")
        if req.n != 1:
            raise APIError(400, f"n={req.n}: model {name!r} answers one dialogue per request (send "
                           "several requests; they are batched)", param="n", code="n_unsupported")
        cfg = pair_config(self.config.collab, max_tokens=req.token_limit(), temperature=req.temperature,
                          top_p=req.top_p, seed=req.seed)
        budget = dialogue_budget(cfg)
        self.check_budget(budget, f"{cfg.max_turns} turns of each role at up to {cfg.max_new_tokens_long} "
                          f"(long) and {cfg.max_new_tokens_short} (short) tokens")
        await self.check_pair_fits(users[-1], cfg)
        key = ("pair", cfg.model_dump_json())
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        job = self.batcher.submit("pair", key, (users[-1], cfg), budget)
        if req.stream:
            return responses.stream(responses.pair_chunks(rid, name, job))
        record, bsz = await job
        return responses.pair_response(rid, name, record, bsz)

    def _params(self, req: SamplingFields, role: str):
        return single_params(self.config.collab, role, max_tokens=req.token_limit(),
                             ceiling=self.config.max_tokens_limit, temperature=req.temperature,
                             top_p=req.top_p, stop=req.stop, n=req.n, seed=req.seed, logprobs=bool(req.logprobs))

    async def _chat_single(self, req: ChatCompletionRequest, texts: list[str], role: str):
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
        gen = GenerationRequest(messages=msgs, assistant_prefix=prefix, params=self._params(req, role))
        return await self._single(req, gen, role, chat=True, what="the messages")

    async def completions(self, req: CompletionRequest):
        target = self.target(req.model)
        if target == "pair":
            raise APIError(400, f"model {self.config.model_name!r} answers chat requests only "
                           "(POST /v1/chat/completions); use 'long' or 'short' here", param="model")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request (requests are batched by the server)",
                           param="prompt")
        if not prompts[0]:
            raise APIError(400, "the prompt is empty: give the model some text to continue",
                           param="prompt", code="empty_prompt")
        self.check_size(prompts, "prompt")
        self.check_tokens(req)
        gen = GenerationRequest(prompt=prompts[0], params=self._params(req, target))
        return await self._single(req, gen, target, chat=False, what="the prompt")

    async def _single(self, req: SamplingFields, gen: GenerationRequest, role: str, *, chat: bool, what: str):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = req.model or role
        p = gen.params
        self.check_budget(single_budget(p), f"n={p.n} x max_tokens={p.max_new_tokens}")
        shorter = await self.check_context(role, gen, p.max_new_tokens, explicit=req.token_limit() is not None,
                                           what=what)
        if shorter is not None:  # the server's default limit, cut to what the context leaves
            p.max_new_tokens = shorter
        job = self.batcher.submit(role, (role, chat), gen, single_budget(p))
        tokenizer = getattr(self.batcher.engines[role], "tokenizer", None)
        if req.stream:
            return responses.stream(responses.single_chunks(rid, model, job, chat))
        result, _bsz = await job
        return responses.single_response(rid, model, result, tokenizer, chat)

    def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        """vLLM's token counter (the openai engine's `count_tokens` uses it)."""
        role = self.target(req.model)
        if role == "pair":
            raise APIError(400, f"model {self.config.model_name!r} is two models with their own tokenizers; "
                           "tokenize with 'long' or 'short'", param="model")
        self.check_size([req.prompt], "prompt")
        engine = self.batcher.engines[role]
        if req.add_special_tokens and getattr(engine, "tokenizer", None) is not None:
            ids = list(engine.tokenizer(req.prompt, add_special_tokens=True)["input_ids"])
            return {"count": len(ids), "tokens": ids}
        if hasattr(engine, "encode"):
            ids = engine.encode(req.prompt)
            return {"count": len(ids), "tokens": ids}
        return {"count": engine.count_tokens(req.prompt)}
