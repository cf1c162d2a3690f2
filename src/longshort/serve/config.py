"""`ServeConfig`: every setting of `longshort serve` with its default and why (docs/serving.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from longshort.dialogue.collab import CollabConfig
from longshort.serve.sampling import dialogue_budget


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
    max_request_tokens: int | None = Field(
        None, ge=1, description="most tokens one request may make the server generate (400 beyond): "
        "n x max_tokens for one model, max_turns x (long + short turn limits) for the pair; None = "
        "8192 or the solver's own dialogue budget if larger, so no request holds the generation "
        "thread for minutes while the server's defaults always fit")
    express_max_tokens: int = Field(
        256, ge=0, description="requests whose token budget is within this run on a second "
        "generation thread beside long ones (the express lane), so a short request is answered "
        "while a long one generates; 0 = one thread (small requests then only jump the queue)")
    max_json_depth: int = Field(64, ge=2, description="deepest nesting of a JSON body (400 beyond); "
                                "OpenAI requests need about 5")
    api_key: str | None = Field(None, description="when set, every endpoint but /health needs "
                                "'Authorization: Bearer <key>' (401 otherwise), as `vllm serve --api-key`")
    allowed_hosts: list[str] | None = Field(
        None, description="Host header values accepted (port ignored; '*' = any); None = loopback "
        "names only (localhost, 127.0.0.1, ::1), which stops DNS-rebinding pages from reaching a "
        "loopback server; `serve()` on a non-loopback address makes None mean any")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty "
                                    "(the default) = no CORS headers, so browser pages cannot read replies")
    expose_single_models: bool = Field(True, description="serve 'long'/'short' as plain models, "
                                       "needed by `longshort solve --engine openai` against us")
    request_timeout_s: float = Field(600.0, gt=0, description="a request waiting longer gets 504; "
                                     "ten minutes covers a full dialogue on CPU")
    collab: CollabConfig = Field(default_factory=CollabConfig,
                                 description="the solver's defaults (turns, per-turn limits, sampling)")

    @model_validator(mode="after")
    def _request_cap_fits_defaults(self) -> ServeConfig:
        own = dialogue_budget(self.collab)
        if self.max_request_tokens is not None and self.max_request_tokens < own:
            raise ValueError(f"max_request_tokens={self.max_request_tokens} is below the solver's own "
                             f"dialogue budget {own} (max_turns x (long + short turn limits)): every "
                             "default request would be refused")
        return self

    def request_token_cap(self) -> int:
        """The effective `max_request_tokens`."""
        if self.max_request_tokens is not None:
            return self.max_request_tokens
        return max(8192, dialogue_budget(self.collab))

