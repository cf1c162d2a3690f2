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

from longshort.serve.app import create_app, serve
from longshort.serve.config import ServeConfig
from longshort.serve.handlers import Handlers
from longshort.serve.protocol import APIError
from longshort.serve.sampling import answer_text, pair_config, single_params

__all__ = ["APIError", "Handlers", "ServeConfig", "answer_text", "create_app", "pair_config", "serve",
           "single_params"]
