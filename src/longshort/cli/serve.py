"""CLI command `longshort serve`: the OpenAI-compatible server over the pair (see docs/serving.md)."""

from __future__ import annotations

import typer

from longshort.cli.app import app
from longshort.errors import LongshortError


@app.command()
def serve(
    long: str = typer.Option("smollm2-135m", "--long", help="long-thought model spec"),
    short: str = typer.Option("smollm2-135m", "--short", help="short-thought model spec"),
    host: str = typer.Option("127.0.0.1", help="address to bind; loopback by default (no auth here)"),
    port: int = typer.Option(8000, help="TCP port"),
    engine: str = typer.Option("transformers", help="generation engine: transformers, vllm, openai"),
    base_url: str = typer.Option(None, "--base-url", help="upstream server for --engine openai"),
    model_name: str = typer.Option("longshort", help="name clients use for the pair"),
    max_batch_size: int = typer.Option(16, help="most requests solved in one batch"),
    max_wait_ms: float = typer.Option(20.0, help="wait for more requests before a batch (ms)"),
    max_tokens_limit: int = typer.Option(4096, help="largest max_tokens a request may ask for"),
    max_turns: int = typer.Option(None, help="long turns per dialogue (solver default if unset)"),
    max_new_tokens: int = typer.Option(None, help="per-turn token limit for both roles (solver default if unset)"),
    temperature: float = typer.Option(None, help="default sampling temperature (solver default if unset)"),
    seed: int = typer.Option(None, help="default sampling seed"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the long/short pair over an OpenAI-compatible HTTP API (/v1/chat/completions)."""
    from pydantic import ValidationError

    from longshort.dialogue.collab import CollabConfig
    from longshort.engines import make_engine
    from longshort.serve import ServeConfig
    from longshort.serve import serve as run_server

    if not 0 < port < 65536:
        raise LongshortError(f"--port {port}: must be between 1 and 65535")
    collab_update = {}
    if max_turns is not None:
        collab_update["max_turns"] = max_turns
    if max_new_tokens is not None:
        collab_update["max_new_tokens_long"] = max_new_tokens
        collab_update["max_new_tokens_short"] = max_new_tokens
    if temperature is not None:
        collab_update["temperature"] = temperature
    if seed is not None:
        collab_update["seed"] = seed
    try:
        collab = CollabConfig(**collab_update)
        config = ServeConfig(model_name=model_name, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_tokens_limit=max_tokens_limit, collab=collab)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise LongshortError(f"invalid option {loc}: {first['msg']}") from None
    long_engine = make_engine(long, engine, base_url=base_url)
    short_engine = long_engine if (short == long) else make_engine(short, engine, base_url=base_url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: the server has no authentication; anyone who can reach "
                   "this address can use the models", err=True)
    typer.echo(f"serving {model_name!r} (long={long}, short={short}, engine={engine}) "
               f"on http://{host}:{port}/v1", err=True)
    run_server(long_engine, short_engine, config, host=host, port=port, log_level=log_level)
