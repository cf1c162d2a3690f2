"""OpenAI-compatible HTTP server over the collaborative solver (DESIGN §3, docs/serving.md).

A thin layer, in the spirit of vLLM's `entrypoints/openai`: the server owns no reasoning logic,
it calls the same `longshort.dialogue.collab.solve_problems` that `longshort solve` and
`longshort eval` use.

Modules, one topic each:
- `config`: `ServeConfig`, every setting with its default and why;
- `protocol`: the OpenAI request schemas, `APIError` and reading a JSON body;
- `sampling`: what a request's `max_tokens` / temperature / seed mean for the pair and for one model;
- `batcher`: queues, batching, the generation lanes (main + express) and failure isolation;
- `handlers`: `Handlers`, the endpoints' logic as methods (testable without HTTP);
- `responses`: response bodies, stream chunks and Server-Sent Events;
- `security`: the HTTP guard (Host check, API key, JSON media type, body size);
- `app`: `create_app` (thin routes) and `serve` (uvicorn).
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported names and their modules, imported on first use (PEP 562): reading `serve.config`
# (as the CLI does for its help texts) must not pull in FastAPI and uvicorn.
_EXPORTS = {"create_app": "app", "serve": "app", "ServeConfig": "config", "Handlers": "handlers",
            "APIError": "protocol", "answer_text": "sampling", "pair_config": "sampling",
            "single_params": "sampling"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
