"""The reservation REST API (FastAPI): place, read, list and cancel orders.

An order and its event are written in one statement (`services.reservation.placing`):
the order row, its first journey step and the outbox row commit together or not at all.
The relay publishes later. When PostgreSQL refuses connections the API answers 503 with
Retry-After, so clients back off instead of reading a 500 as a bug.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import psycopg
import psycopg_pool
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox.store import OutboxEvent, add_events
from services.common.http_errors import install_error_handlers
from services.common.tracing import FASTAPI_TELEMETRY, continue_trace, trace_id_of
from services.reservation import db, placing
from services.reservation.domain import (
    CANCELLABLE,
    OrderCancelled,
    OrderItem,
    OrderStatus,
    PlaceOrder,
)
from services.reservation.errors import IdempotencyConflict
from services.reservation.metrics import ApiMetrics
from services.reservation.placing import Writer

log = logging.getLogger(__name__)


# Seconds a client is asked to wait when the database is unavailable.
RETRY_AFTER_SECONDS = 2
_DB_DOWN = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    ConnectionRefusedError,
)


class JourneyStep(BaseModel):
    status: OrderStatus
    reason: str | None
    attempt: int | None
    details: dict[str, Any] | None
    at: datetime


class OrderOut(BaseModel):
    id: UUID
    customer_id: str
    items: list[OrderItem]
    status: OrderStatus
    status_reason: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None
    cancel_requested_at: datetime | None
    trace_id: str | None
    journey: list[JourneyStep] | None = None

    @classmethod
    def of(cls, row: db.OrderRow, journey: list[dict[str, Any]] | None = None) -> OrderOut:
        return cls(
            id=row.id,
            customer_id=row.customer_id,
            items=[OrderItem(**item) for item in row.items],
            status=row.status,
            status_reason=row.status_reason,
            attempts=row.attempts,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finalized_at=row.finalized_at,
            cancel_requested_at=row.cancel_requested_at,
            trace_id=row.trace_id,
            journey=[JourneyStep(**step) for step in journey] if journey is not None else None,
        )


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None = Field(description="pass as ?cursor= to get the next page")


class ErrorOut(BaseModel):
    detail: str


class FieldError(BaseModel):
    """One item of FastAPI's validation error list (it may carry more keys, e.g. input)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class Unprocessable(BaseModel):
    """422: a list for schema violations, a sentence for rule violations."""

    detail: str | list[FieldError]


class BodySizeLimit:
    """Reject bodies over `max_bytes` with 413 before the app parses them.

    Starlette has no built-in limit; checking Content-Length alone would let a chunked
    body through, so the stream is counted as well.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body exceeds {self.max_bytes} bytes"}, status_code=413
        )
        await response({"type": "http"}, _empty_receive, send)


class RequestTiming:
    """The request-duration histogram, as plain ASGI (Starlette's `@app.middleware("http")`
    wraps every request in extra tasks and streams, a real share of a request's CPU)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            route = scope.get("route")  # FastAPI's router records the matched route here
            self.metrics.request_seconds.labels(
                scope["method"], getattr(route, "path", "unmatched"), str(status)
            ).observe(time.perf_counter() - started)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "database unavailable",
        extra={"event.action": "database_unavailable", "error.type": type(exc).__name__},
    )
    return JSONResponse(
        {"detail": f"the database is unavailable ({type(exc).__name__}); retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, because FastAPI turns any other error raised while it reads the
    body into a 400; this one it re-raises, and the app's handler answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_api(
    *,
    engine: AsyncEngine,
    writer: Writer,
    registry: CollectorRegistry,
    topic: str,
    max_body_bytes: int,
    admin_router: APIRouter | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    metrics = ApiMetrics(registry)
    app = FastAPI(
        title="steadfast reservation API",
        version="1.0.0",
        description="Place orders; a resilient Kafka consumer reserves their stock.",
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.state.engine = engine
    install_error_handlers(app)
    for unavailable in _DB_DOWN:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestTiming, metrics=metrics)

    router = _orders_router(engine, writer, metrics, topic)
    app.include_router(router)
    if admin_router is not None:
        app.include_router(admin_router)
    _document_body_errors(app, max_body_bytes)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        # A plain route, not a mounted app: a mount answers /metrics with a 307 redirect.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["ops"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["ops"],
        summary="Readiness: the database answers",
        responses={503: {"model": ErrorOut}},
    )
    async def ready() -> dict[str, str]:
        try:
            async with writer() as conn:
                await conn.execute("SELECT 1")
            async with engine.connect() as sa_conn:
                await sa_conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise HTTPException(503, f"database unavailable: {type(exc).__name__}") from exc
        return {"status": "ready"}

    return app


def _document_body_errors(app: FastAPI, max_bytes: int) -> None:
    """Every operation that takes a body can answer 400 (FastAPI: a body it cannot parse)
    and 413 (BodySizeLimit wraps the whole app, routers included), so the app documents
    both in its OpenAPI document rather than each router on each route."""
    build = app.openapi
    content = {"application/json": {"schema": _DETAIL_SCHEMA}}
    errors = {
        "400": {"description": "A body that cannot be parsed", "content": content},
        "413": {"description": f"Request body over {max_bytes} bytes", "content": content},
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if "requestBody" in operation:
                        for status, response in errors.items():
                            operation["responses"].setdefault(status, response)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


_DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


async def _connection(request: Request) -> AsyncIterator[AsyncConnection]:
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        yield conn


Conn = Annotated[AsyncConnection, Depends(_connection)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a POST safely: the same key and body return the same order.",
    ),
]
TraceParent = Annotated[str | None, Header(alias="traceparent", max_length=128)]


def _orders_router(
    engine: AsyncEngine, writer: Writer, metrics: ApiMetrics, topic: str
) -> APIRouter:
    router = APIRouter(prefix="/orders", tags=["orders"])

    @router.post(
        "",
        status_code=202,
        response_model=OrderOut,
        responses={
            422: {"model": Unprocessable, "description": "Invalid body, or Idempotency-Key reused"},
            503: {"model": ErrorOut, "description": "The database is unavailable (Retry-After)"},
        },
        summary="Place an order; its stock is reserved asynchronously",
    )
    async def place_order(
        body: PlaceOrder,
        response: Response,
        idempotency_key: IdempotencyKey = None,
        traceparent: TraceParent = None,
    ) -> OrderOut:
        with continue_trace(traceparent, "place order") as child_traceparent:
            try:
                async with writer() as conn:
                    row, replayed = await placing.place(
                        conn,
                        body,
                        idempotency_key=idempotency_key,
                        traceparent=child_traceparent,
                        trace_id=trace_id_of(child_traceparent),
                        topic=topic,
                    )
            except IdempotencyConflict as exc:
                raise HTTPException(422, str(exc)) from exc
            if replayed:
                metrics.idempotent_replays.inc()
                response.headers["Idempotent-Replayed"] = "true"
            else:
                metrics.orders_placed.inc()
                log.info(
                    "order placed",
                    extra={
                        "event.action": "order_placed",
                        "labels.order_id": str(row.id),
                        "labels.customer_id": row.customer_id,
                        "items": len(row.items),
                    },
                )
        response.headers["Location"] = f"/orders/{row.id}"
        return OrderOut.of(row)

    @router.get(
        "/{order_id}",
        response_model=OrderOut,
        responses={404: {"model": ErrorOut}},
        summary="An order with its journey: every status change with time and reason",
    )
    async def get_order(order_id: UUID, conn: Conn) -> OrderOut:
        row = await db.get_order(conn, order_id)
        if row is None:
            raise HTTPException(404, f"order {order_id} not found")
        return OrderOut.of(row, await db.journey(conn, order_id))

    @router.get(
        "",
        response_model=OrderPage,
        responses={400: {"model": ErrorOut}},
        summary="List orders, newest first, with cursor pagination",
    )
    async def list_orders(
        conn: Conn,
        status: Annotated[list[OrderStatus] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> OrderPage:
        try:
            rows, next_cursor = await db.list_orders(
                conn, statuses=status or (), limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return OrderPage(items=[OrderOut.of(r) for r in rows], next_cursor=next_cursor)

    @router.post(
        "/{order_id}/cancel",
        status_code=202,
        response_model=OrderOut,
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
        summary="Cancel an order; a reserved order's stock is released",
    )
    async def cancel_order(
        order_id: UUID, response: Response, traceparent: TraceParent = None
    ) -> OrderOut:
        with continue_trace(traceparent, "cancel order") as child_traceparent:
            async with engine.begin() as conn:
                row = await db.get_order(conn, order_id)
                if row is None:
                    raise HTTPException(404, f"order {order_id} not found")
                if row.status not in CANCELLABLE:
                    raise HTTPException(409, f"order is {row.status.value} and cannot be cancelled")
                if await db.request_cancel(conn, order_id):
                    event = OrderCancelled(order_id=order_id, requested_at=datetime.now(UTC))
                    await add_events(conn, [_outbox_event(event, topic, child_traceparent)])
                    metrics.cancels.inc()
                    log.info(
                        "cancel requested",
                        extra={
                            "event.action": "order_cancel_requested",
                            "labels.order_id": str(order_id),
                        },
                    )
                row = await db.get_order(conn, order_id)
        assert row is not None
        response.headers["Location"] = f"/orders/{order_id}"
        return OrderOut.of(row)

    return router


def _outbox_event(event: OrderCancelled, topic: str, traceparent: str) -> OutboxEvent:
    return OutboxEvent(
        event_id=uuid.uuid4(),
        aggregate_id=str(event.order_id),
        topic=topic,
        key=str(event.order_id),
        payload=event.model_dump(mode="json"),
        headers={
            "event_type": event.event_type,
            "schema_version": str(event.schema_version),
            "traceparent": traceparent,
            "content_type": "application/json",
        },
    )
