"""The FastAPI app: thin routes over `Handlers`, error bodies, and `serve()` under uvicorn."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from longshort.engines.base import Engine
from longshort.serve.config import ServeConfig
from longshort.serve.handlers import Handlers
from longshort.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    parse_body,
)
from longshort.serve.security import Guard, is_loopback

log = logging.getLogger(__name__)


def _handlers(request: Request) -> Handlers:
    return request.app.state.handlers


async def _read(request: Request, schema):
    config = _handlers(request).config
    return parse_body(await request.body(), schema, max_bytes=config.max_body_bytes,
                      max_depth=config.max_json_depth)


def create_app(long_engine: Engine, short_engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving the pair (`config.model_name`) and, optionally, each model alone."""
    config = config or ServeConfig()
    handlers = Handlers(long_engine, short_engine, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        handlers.batcher.start()
        try:
            yield
        finally:
            await handlers.batcher.stop()

    app = FastAPI(title="longshort", version="1", lifespan=lifespan)
    app.state.handlers = handlers
    app.state.batcher = handlers.batcher
    app.state.config = config
    app.add_middleware(Guard, config=config)
    if config.cors_origins:  # off unless asked for: outermost, so preflights are answered
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])

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
    async def health(request: Request):
        return _handlers(request).health()

    @app.get("/metrics")
    async def metrics(request: Request):
        return PlainTextResponse(_handlers(request).metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        return _handlers(request).models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _handlers(request).chat(await _read(request, ChatCompletionRequest))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _handlers(request).completions(await _read(request, CompletionRequest))

    @app.post("/tokenize")
    async def tokenize(request: Request):
        return _handlers(request).tokenize(await _read(request, TokenizeRequest))

    return app


def uvicorn_config(app: FastAPI, **kwargs: Any) -> Any:
    """The uvicorn settings the server runs with (`serve`; tests start it the same way): its
    parser-level errors in the API's JSON error format (`serve.http`)."""
    import uvicorn

    from longshort.serve.http import JSONErrorH11Protocol

    return uvicorn.Config(app, http=JSONErrorH11Protocol, **kwargs)


def serve(long_engine: Engine, short_engine: Engine, config: ServeConfig | None = None, *,
          host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server with uvicorn until interrupted.

    On a loopback `host` only loopback Host names are served (unless `config.allowed_hosts`
    says otherwise); on any other address an unset `allowed_hosts` means any name."""
    import uvicorn

    config = config or ServeConfig()
    if config.allowed_hosts is None and not is_loopback(host):
        config = config.model_copy(update={"allowed_hosts": ["*"]})
    app = create_app(long_engine, short_engine, config)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()
