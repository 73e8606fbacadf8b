"""Guard: the ASGI middleware in front of every route.

It enforces the body limit while the body streams in (Content-Length or chunked), checks
API keys and scopes, applies the per-client rate limit, counts requests for /metrics, and
answers an unexpected error with a JSON 500 instead of letting the server drop the
keep-alive connection.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from metricvision.serve.access import ApiKeys, RateLimiter, allows
from metricvision.serve.metrics import RequestMetrics

Scope = Dict[str, Any]
Message = Dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
PUBLIC = ("/healthz", "/readyz", "/", "/favicon.ico")
CLOSE = {"connection": "close"}  # the unread rest of an oversized body is not drained
LOG = logging.getLogger("metricvision.serve")


class BodyTooLarge(Exception):
    """The request body passed the limit while streaming."""


def needed_scope(method: str, path: str) -> Optional[str]:
    """The scope a request needs: None for the page and health checks, "write" for item writes, else "read"."""
    if path in PUBLIC or path.startswith("/static/") or method == "OPTIONS":
        return None
    if method in ("POST", "DELETE", "PUT", "PATCH") and path.startswith("/v1/items"):
        return "write"
    return "read"


class Guard:
    """ASGI middleware: body limit, API keys, rate limit, metrics and JSON 500s.

    Args:
        app: the wrapped ASGI app.
        max_body: largest request body in bytes.
        metrics: request counters.
        keys: API keys (None: open access).
        limiter: per-client rate limit (None: unlimited).
    """

    def __init__(self, app: ASGIApp, max_body: int, metrics: RequestMetrics, keys: Optional[ApiKeys] = None,
                 limiter: Optional[RateLimiter] = None) -> None:
        self.app, self.max_body, self.metrics, self.keys, self.limiter = app, max_body, metrics, keys, limiter

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, state = time.perf_counter(), {"status": 0, "too_large": False}
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def reply(status: int, message: str, extra: Optional[Dict[str, str]] = None) -> None:
            body = json.dumps({"error": message}).encode()
            head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            head += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
            state["status"] = status
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body})

        try:
            refusal = self._refuse(method, path, headers, scope)
            if refusal is not None:
                await reply(*refusal)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        state["too_large"] = True
                        raise BodyTooLarge()  # stops the parser: nothing more is read or spooled
                return message

            async def watched_send(message: Message) -> None:
                if state["too_large"]:
                    if message["type"] == "http.response.start":
                        await reply(413, f"request body passed {self.max_body} bytes (the limit)", CLOSE)
                    return
                if message["type"] == "http.response.start":
                    state["status"] = message["status"]
                await send(message)

            await self.app(scope, limited_receive, watched_send)
        except Exception as e:
            if state["status"]:
                raise  # the response has begun: nothing clean is left to send
            if isinstance(e, BodyTooLarge) or state["too_large"]:
                await reply(413, f"request body passed {self.max_body} bytes (the limit)", CLOSE)
            else:
                LOG.exception("error serving %s %s", method, path)
                await reply(500, f"internal error ({type(e).__name__}); the server keeps serving")
        finally:
            route = getattr(scope.get("route"), "path", None) or ("/static" if path.startswith("/static") else "unmatched")
            self.metrics.observe(method, route, state["status"] or 500, time.perf_counter() - start)

    def _refuse(self, method: str, path: str, headers: Dict[str, str], scope: Scope) -> Optional[tuple]:
        """(status, message[, headers]) when the request is refused before it reaches a route."""
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body:
            return 413, f"request body is {length} bytes; the limit is {self.max_body}", CLOSE
        presented = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip() or None
        needed = needed_scope(method, path)
        if self.keys is not None and needed is not None:
            granted = self.keys.scope(presented)
            if granted is None:
                return 401, "missing or unknown API key (send it as X-API-Key or Authorization: Bearer)", {"www-authenticate": "Bearer"}
            if not allows(granted, needed):
                return 403, f"this API key has scope '{granted}'; {method} {path} needs '{needed}'"
        if self.limiter is not None and needed is not None:
            client = f"key:{presented}" if presented else f"ip:{(scope.get('client') or ('?',))[0]}"
            wait = self.limiter.take(client)
            if wait > 0:
                return 429, f"rate limit of {self.limiter.rate:g} requests/s exceeded; retry in {wait:.2f} s", {"retry-after": str(math.ceil(wait))}
        return None
