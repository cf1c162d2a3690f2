"""CLI command `longshort serve`: the OpenAI-compatible server over the pair (see docs/serving.md).

Server options left unset mean `ServeConfig`'s default (its field descriptions are the help
texts), and solver options left unset mean `CollabConfig`'s: each default lives in one place.
"""

from __future__ import annotations

import typer

from longshort.cli.app import app, config_default
from longshort.errors import LongshortError


def _help(name: str) -> str:
    from longshort.serve.config import ServeConfig

    return f"{ServeConfig.model_fields[name].description} (default: {config_default(ServeConfig, name)})"


@app.command()
def serve(
    long: str = typer.Option("smollm2-135m", "--long", help="long-thought model spec"),
    short: str = typer.Option("smollm2-135m", "--short", help="short-thought model spec"),
    host: str = typer.Option("127.0.0.1", help="address to bind; loopback by default"),
    port: int = typer.Option(8000, help="TCP port"),
    engine: str = typer.Option("transformers", help="generation engine: transformers, vllm, openai"),
    base_url: str = typer.Option(None, "--base-url", help="upstream server for --engine openai"),
    long_base_url: str = typer.Option(None, "--long-base-url", help="the long model's own upstream server (over --base-url)"),
    short_base_url: str = typer.Option(None, "--short-base-url", help="the short model's own upstream server (over --base-url)"),
    api_key: str = typer.Option(None, "--api-key", envvar="LONGSHORT_API_KEY", show_envvar=True,
                                help="require 'Authorization: Bearer <key>' on every endpoint but /health "
                                     "(as `vllm serve --api-key`); needed beyond loopback"),
    model_name: str = typer.Option(None, help=_help("model_name")),
    max_batch_size: int = typer.Option(None, help=_help("max_batch_size")),
    max_wait_ms: float = typer.Option(None, help=_help("max_wait_ms")),
    max_tokens_limit: int = typer.Option(None, help=_help("max_tokens_limit")),
    max_request_tokens: int = typer.Option(None, help=_help("max_request_tokens")),
    express_max_tokens: int = typer.Option(None, help=_help("express_max_tokens")),
    max_body_bytes: int = typer.Option(None, help=_help("max_body_bytes")),
    allowed_host: list[str] = typer.Option(None, "--allowed-host", help=_help("allowed_hosts") + " (repeatable)"),
    cors_origin: list[str] = typer.Option(None, "--cors-origin", help=_help("cors_origins") + " (repeatable)"),
    max_turns: int = typer.Option(None, help="long turns per dialogue (solver default if unset)"),
    max_new_tokens: int = typer.Option(None, help="most tokens one generation writes: every turn of either role (solver default if unset)"),
    temperature: float = typer.Option(None, help="default sampling temperature (solver default if unset)"),
    seed: int = typer.Option(None, help="default sampling seed"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the long/short pair over an OpenAI-compatible HTTP API (/v1/chat/completions)."""
    from pydantic import ValidationError

    from longshort.dialogue.collab import CollabConfig
    from longshort.serve.config import ServeConfig
    from longshort.serve.security import is_loopback

    if not 0 < port < 65536:
        raise LongshortError(f"--port {port}: must be between 1 and 65535")
    collab_update: dict = CollabConfig.token_flags(max_new_tokens)
    if max_turns is not None:
        collab_update["max_turns"] = max_turns
    if temperature is not None:
        collab_update["temperature"] = temperature
    if seed is not None:
        collab_update["seed"] = seed
    options = {"model_name": model_name, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
               "max_tokens_limit": max_tokens_limit, "max_request_tokens": max_request_tokens,
               "express_max_tokens": express_max_tokens, "max_body_bytes": max_body_bytes,
               "api_key": api_key or None, "allowed_hosts": allowed_host or None, "cors_origins": cors_origin}
    try:
        collab = CollabConfig(**collab_update)
        config = ServeConfig(collab=collab, **{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise LongshortError(f"invalid option {loc}: {first['msg']}") from None

    from longshort.engines import make_pair
    from longshort.serve import serve as run_server

    long_engine, short_engine = make_pair(long, short, engine, base_url=base_url, long_base_url=long_base_url,
                                          short_base_url=short_base_url)
    if not is_loopback(host) and not config.api_key:
        typer.echo(f"warning: binding {host} without --api-key (or LONGSHORT_API_KEY): anyone who can "
                   "reach this address can use the models", err=True)
    typer.echo(f"serving {config.model_name!r} (long={long}, short={short}, engine={engine}) "
               f"on http://{host}:{port}/v1{' (API key required)' if config.api_key else ''}", err=True)
    run_server(long_engine, short_engine, config, host=host, port=port, log_level=log_level)
