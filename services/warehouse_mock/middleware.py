"""ASGI middleware of the warehouse mock: request accounting and a request body size cap."""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logs import trace_context

# W3C traceparent: version-traceid-parentid-flags; the trace id joins our logs to the caller's.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
UNMATCHED_ROUTE = "unmatched"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestRecorder:
    """Counts every answered request as ("METHOD /route/template", status).

    Uses the route template, never the raw path, so a fuzzer's random URLs cannot create
    unbounded label values.
    """

    def __init__(self, app: ASGIApp, record: Callable[[str, int], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server sends if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        traceparent = _header(scope, b"traceparent")
        match = _TRACEPARENT.match(traceparent or "")
        try:
            with trace_context(match.group(1) if match else None):
                await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            label = f"{scope['method']} {template}" if template else UNMATCHED_ROUTE
            self.record(label, status)


class BodySizeLimit:
    """Answers 413 once a request body grows past ``max_bytes``; the rest is never read.

    Counting the received bytes covers chunked bodies and lying Content-Length headers
    alike, and since the error is raised inside the route, the 413 is counted per route.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body reading untouched and is
                    # turned into the 413 response by the app's exception handling.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"
