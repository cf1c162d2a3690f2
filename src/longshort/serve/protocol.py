"""The wire format: OpenAI request schemas, the JSON error body, and reading a request body.

Validation lives here, in the pydantic request models (as vLLM's `entrypoints/openai/protocol.py`):
a handler receives a request that already has the right types and ranges.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)


class APIError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or None
    return APIError(400, f"invalid request: {loc or 'body'}: {first.get('msg')}", param=loc,
                    code="invalid_field")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = ""

    def text(self) -> str:
        """The message's text; ValueError for non-text content parts."""
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


#: Most stop strings per request, and characters per stop string: every generated token is checked
#: against every stop string, so 10,000 of them would slow the whole batch they share. OpenAI allows
#: 4; the dialogue protocol sends 2.
MAX_STOP = 64
MAX_STOP_CHARS = 1000
#: Most log-probabilities per token a request may ask for (vLLM's default `max_logprobs`).
MAX_LOGPROBS = 20
#: OpenAI fields this server does not implement: refused when set to anything but their no-op value,
#: instead of being silently ignored (a client asking for them would get answers it did not ask for).
UNSUPPORTED = {"echo": (False, None), "best_of": (1, None), "suffix": ("", None), "logit_bias": ({}, None),
               "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "tools": ([], None),
               "functions": ([], None)}


def _no_coercion(v: Any, info: Any) -> Any:
    """Numbers must be JSON numbers: "3" or true is an error, not 3 or 1 (as OpenAI answers)."""
    if isinstance(v, bool | str):
        raise ValueError(f"expected a number, got {json.dumps(v)[:40]}")
    return v


class SamplingFields(BaseModel):
    """Fields common to chat and text completions (OpenAI names; unknown fields are ignored,
    as OpenAI clients send many optional ones, but the ones that would change the answer and are
    not implemented are refused: `UNSUPPORTED`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2 ** 63), lt=2 ** 64)
    stop: str | list[str] | None = None
    stream: StrictBool = False  # "yes" or 1 is an error, not True (as OpenAI answers)
    stream_options: dict[str, Any] | None = None
    logprobs: StrictBool | StrictInt | None = Field(None, description="chat: true/false; completions: how "
                                                    f"many per token, 0-{MAX_LOGPROBS}")
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)

    _numbers = field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
                               mode="before")(_no_coercion)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, no_ops in UNSUPPORTED.items():
                v = data.get(name)
                if not any(v is None if x is None else (type(v) is type(x) and v == x) for x in no_ops):
                    raise APIError(400, f"{name}={json.dumps(v)[:60]} is not supported by this server (leave it "
                                   "out)", param=name, code="unsupported_parameter")
        return data

    @field_validator("logprobs")
    @classmethod
    def _logprobs_range(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_LOGPROBS:
            raise ValueError(f"expected true/false or a count from 0 to {MAX_LOGPROBS}, got {v}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"{len(stops)} stop strings; at most {MAX_STOP}")
        for s in stops:
            if not s:
                raise ValueError("an empty stop string would end every completion at once")
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string of {len(s)} characters; at most {MAX_STOP_CHARS}")
        return stops

    def token_limit(self) -> int | None:
        """The request's `max_completion_tokens` (newer OpenAI name) or `max_tokens`; None = unset."""
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    continue_final_message: StrictBool = False
    add_generation_prompt: StrictBool = True


class CompletionRequest(SamplingFields):
    prompt: str | list[str]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str
    add_special_tokens: StrictBool = True


def json_depth(data: Any, limit: int) -> int:
    """Nesting depth of decoded JSON, counted without recursion, stopping past `limit`.

    >>> json_depth({"a": [1, {"b": []}]}, 64), json_depth([[[[]]]], 2)
    (4, 3)
    """
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_body(body: bytes, schema: type[BaseModel], *, max_bytes: int, max_depth: int = 64) -> Any:
    """Decode a JSON object body and validate it against `schema`; APIError (413/400) if not."""
    if len(body) > max_bytes:
        raise APIError(413, f"request body of {len(body)} bytes exceeds the limit of {max_bytes}",
                       code="body_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # the C decoder's guard against a body nested thousands deep
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    except ValueError:  # an integer of more than 4,300 digits (Python's int_max_str_digits)
        raise APIError(400, "request body holds a number with more digits than this server reads (4,300)",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    if json_depth(data, max_depth) > max_depth:
        raise APIError(400, f"request body is nested deeper than {max_depth} levels", code="invalid_json")
    try:  # JSON may spell a lone surrogate ("\ud800"), which no tokenizer can encode
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "request body holds text that is not valid Unicode (a lone surrogate such as "
                       "\\ud800)", code="invalid_json") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
