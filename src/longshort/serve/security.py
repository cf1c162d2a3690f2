"""The HTTP guard in front of every route: Host check, API key, media type and body size.

A plain ASGI middleware, so a refused request costs no body read and no route work:
1. `Host` must be an allowed name (by default the loopback names), so a page whose DNS name
   was rebound to 127.0.0.1 cannot talk to a loopback server from the victim's browser (400);
2. with an API key, every path but `/health` needs `Authorization: Bearer <key>` (401);
3. a POST body must be `application/json` (or `+json`): `text/plain` or no type is what a
   cross-site form or `fetch` can send without a CORS preflight (415);
4. a body over `max_body_bytes` is refused from its `Content-Length` before any of it is read
   (413); a chunked body is read only up to the limit.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from longshort.serve.config import ServeConfig
from longshort.serve.protocol import APIError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/health"})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def host_name(host: str) -> str:
    """The name part of a Host header (port and IPv6 brackets removed), lower case.

    >>> host_name("LocalHost:8000"), host_name("[::1]:80"), host_name("127.0.0.1")
    ('localhost', '::1', '127.0.0.1')
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    return host_name(host) in LOOPBACK_NAMES or host_name(host).startswith("127.")


def json_media_type(content_type: str) -> bool:
    """True for application/json and application/*+json (parameters such as charset allowed).

    >>> [json_media_type(t) for t in ("application/json; charset=utf-8", "text/plain", "")]
    [True, False, False]
    """
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _refuse(send: Send, err: APIError, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware applying the checks above (see the module docstring)."""

    def __init__(self, app: Callable, config: ServeConfig):
        self.app = app
        self.config = config
        hosts = config.allowed_hosts
        self.any_host = hosts is not None and "*" in hosts
        self.hosts = LOOPBACK_NAMES if hosts is None else frozenset(host_name(h) for h in hosts)
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        err, extra = self._check(scope, headers)
        if err is not None:
            await _refuse(send, err, extra)
            return
        if scope["method"] in ("POST", "PUT", "PATCH") and "content-length" not in headers:
            receive = await self._bounded(receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: dict[str, str]) -> tuple[APIError | None, list]:
        host = headers.get("host")
        if host is not None and not self.any_host and host_name(host) not in self.hosts:
            return APIError(400, f"Host {host!r} is not served here (allowed: {', '.join(sorted(self.hosts))}); "
                            "set allowed_hosts to serve other names", code="invalid_host"), []
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                return (APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                 type="authentication_error", code="invalid_api_key"),
                        [(b"www-authenticate", b"Bearer")])
        if scope["method"] in ("POST", "PUT", "PATCH"):
            ctype = headers.get("content-type", "")
            if not json_media_type(ctype):
                return APIError(415, f"content-type {ctype or '(none)'!r} is not JSON: send "
                                "'Content-Type: application/json'", code="unsupported_media_type"), []
            length = headers.get("content-length")
            if length is not None:
                try:
                    size = int(length)
                except ValueError:
                    return APIError(400, f"bad Content-Length {length!r}", code="invalid_request"), []
                if size > self.config.max_body_bytes:
                    return APIError(413, f"request body of {size} bytes exceeds the limit of "
                                    f"{self.config.max_body_bytes}", code="body_too_large"), []
        return None, []

    async def _bounded(self, receive: Receive, send: Send) -> Receive | None:
        """Read a body without Content-Length up to the limit; None (413 sent) beyond it."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                await _refuse(send, APIError(413, f"request body exceeds the limit of "
                                             f"{self.config.max_body_bytes} bytes", code="body_too_large"))
                return None
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
