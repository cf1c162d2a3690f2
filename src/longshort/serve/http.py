"""The HTTP layer under the app: uvicorn's h11 protocol with one change.

A request so malformed that it never reaches the app (a Content-Length that is not a number,
two different ones, a broken request line) is answered by uvicorn itself with a plain-text
``400 Invalid HTTP request received.``. OpenAI clients parse every error body as JSON, so
`JSONErrorH11Protocol` answers the same 400 with the body every other error of this server has
(`protocol.APIError`: ``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from longshort.serve.protocol import APIError


def malformed_body(msg: str) -> bytes:
    """The JSON error body of a request the HTTP parser refused."""
    err = APIError(400, f"malformed HTTP request: {msg.rstrip('.')}", code="malformed_http_request")
    return json.dumps(err.body()).encode("utf-8")


class JSONErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with its parser-level 400 written as OpenAI-style JSON."""

    def send_400_response(self, msg: str) -> None:
        body = malformed_body(msg)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii")),
                   (b"connection", b"close")]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
