"""Response bodies: OpenAI `chat.completion` / `text_completion` objects, their stream chunks,
and Server-Sent Events. Pure shaping of solver records and engine results; no logic."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi.responses import StreamingResponse

from longshort.engines.base import Completion, GenerationResult
from longshort.serve.protocol import APIError
from longshort.serve.sampling import answer_text

log = logging.getLogger(__name__)

TURN_FIELDS = ("role", "text", "tokens", "finish_reason", "flags")


def now() -> int:
    return int(time.time())


def usage(record: dict[str, Any]) -> dict[str, int]:
    """OpenAI `usage` of a dialogue, plus generated tokens per role."""
    tokens = record.get("tokens") or {}
    prompt = record.get("prompt_tokens") or {}
    long_t, short_t = int(tokens.get("long", 0)), int(tokens.get("short", 0))
    completion = int(tokens.get("total", long_t + short_t))
    prompt_t = int(sum(int(v) for v in prompt.values())) if isinstance(prompt, dict) else int(prompt)
    return {"prompt_tokens": prompt_t, "completion_tokens": completion,
            "total_tokens": prompt_t + completion, "long_tokens": long_t, "short_tokens": short_t}


def extension(record: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The `longshort` field of a pair response: the transcript and how the dialogue ended."""
    turns = record.get("turns") or []
    return {"turns": [{k: t.get(k) for k in TURN_FIELDS} for t in turns],
            "final_answer": record.get("final_answer"), "finished": bool(record.get("finished")),
            "flags": list(record.get("flags") or []), "num_turns": record.get("num_turns", len(turns)),
            "batch_size": batch_size}


def _finish(record: dict[str, Any]) -> str:
    return "stop" if record.get("finished") else "length"


def pair_response(rid: str, model: str, record: dict[str, Any], batch_size: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(record)},
                         "finish_reason": _finish(record), "logprobs": None}],
            "usage": usage(record), "longshort": extension(record, batch_size)}


async def pair_chunks(rid: str, model: str, job: Awaitable[tuple[dict[str, Any], int]]
                      ) -> AsyncIterator[dict[str, Any]]:
    """Stream chunks of a pair request: role, one chunk per transcript turn, the answer, the end."""
    base = {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None}]}
    record, bsz = await job
    turns = record.get("turns") or []
    for i, turn in enumerate(turns[:-1]):  # the transcript, turn by turn
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}],
               "longshort": {"turn": {"index": i, **{k: turn.get(k) for k in TURN_FIELDS}}}}
    yield {**base, "choices": [{"index": 0, "delta": {"content": answer_text(record)}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(record)}],
           "usage": usage(record), "longshort": extension(record, bsz)}


def logprobs(comp: Completion, tokenizer: Any, chat: bool) -> dict[str, Any] | None:
    """Per-token logprobs in the chat (`content`) or text-completion (`token_logprobs`) format."""
    if comp.logprobs is None:
        return None
    ids = comp.token_ids or []
    tokens = [tokenizer.decode([ids[i]]) if tokenizer is not None and i < len(ids) else ""
              for i in range(len(comp.logprobs))]
    if not chat:
        return {"tokens": tokens, "token_logprobs": list(comp.logprobs), "top_logprobs": None,
                "text_offset": None}
    return {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                        for t, lp in zip(tokens, comp.logprobs, strict=True)]}


def _single_usage(result: GenerationResult) -> dict[str, int]:
    completion = sum(c.num_tokens for c in result.completions)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion}


def single_response(rid: str, model: str, result: GenerationResult, tokenizer: Any, chat: bool) -> dict[str, Any]:
    choices = []
    for i, comp in enumerate(result.completions):
        choice: dict[str, Any] = {"index": i, "finish_reason": comp.finish_reason,
                                  "stop_reason": comp.stop, "logprobs": logprobs(comp, tokenizer, chat)}
        if chat:
            choice["message"] = {"role": "assistant", "content": comp.text}
        else:
            choice["text"] = comp.text
        choices.append(choice)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": now(),
            "model": model, "choices": choices, "usage": _single_usage(result)}


async def single_chunks(rid: str, model: str, job: Awaitable[tuple[GenerationResult, int]], chat: bool
                        ) -> AsyncIterator[dict[str, Any]]:
    base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": now(),
            "model": model}
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
    yield {**base, "choices": [], "usage": _single_usage(result)}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
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
