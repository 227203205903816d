"""ASGI middlewares that turn requests away before any handler runs: a cap on the request
body (413) and the API key (401). Both answer with OpenAI-style error objects."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from quire.server.state import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(send: Send, status: int, message: str, type_: str,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(error_body(status, message, type_)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """413 for a body over max_bytes: by Content-Length before reading, else (a chunked
    body) while it streams in, before the handler sees any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"request body exceeds {self.max_bytes} bytes (the server's "
                   "--max-request-bytes); send a shorter prompt")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await send_error(send, 413, message, "invalid_request_error")
            return await self.app(scope, receive, send)
        # No declared length: take the body in (at most max_bytes of it), then replay it.
        buffered: list[Message] = []
        seen = 0
        while True:
            msg = await receive()
            buffered.append(msg)
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await send_error(send, 413, message, "invalid_request_error")
            if not msg.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


class ApiKeyGuard:
    """Every /v1/* route requires `Authorization: Bearer <api_key>`; /health, /metrics and
    the rest stay open (probes and scrapers carry no key)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await send_error(
                send, 401, "invalid or missing API key: send `Authorization: Bearer <key>` "
                "with the key the server was started with", "authentication_error",
                ((b"www-authenticate", b"Bearer"),))
        await self.app(scope, receive, send)
