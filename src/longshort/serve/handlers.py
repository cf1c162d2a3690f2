"""The serving logic as methods of one object (`Handlers`), testable without HTTP.

Each public method takes a validated request model (see `serve.protocol`) and returns a
response body (or a streaming response); it raises `APIError` for anything the client must fix.
The routes in `serve.app` only read the body and call these methods.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

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
from longshort.serve.sampling import pair_config, single_params


def _engine_name(engine: Engine) -> str:
    return f"{getattr(engine, 'name', 'engine')}:{getattr(engine, 'model_name', '') or '?'}"


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
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1),
                "queued": self.batcher.pending(), "batching": self.batcher.stats.as_dict()}

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
        key = ("pair", cfg.model_dump_json())
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        job = self.batcher.submit("pair", key, (users[-1], cfg))
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
        return await self._single(req, gen, role, chat=True)

    async def completions(self, req: CompletionRequest):
        target = self.target(req.model)
        if target == "pair":
            raise APIError(400, f"model {self.config.model_name!r} answers chat requests only "
                           "(POST /v1/chat/completions); use 'long' or 'short' here", param="model")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request (requests are batched by the server)",
                           param="prompt")
        self.check_size(prompts, "prompt")
        self.check_tokens(req)
        gen = GenerationRequest(prompt=prompts[0], params=self._params(req, target))
        return await self._single(req, gen, target, chat=False)

    async def _single(self, req: SamplingFields, gen: GenerationRequest, role: str, *, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = req.model or role
        job = self.batcher.submit(role, (role, chat), gen)
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
