"""`ServeConfig`: every setting of `longshort serve` with its default and why (docs/serving.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from longshort.dialogue.collab import CollabConfig


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
