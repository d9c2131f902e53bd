"""The console's HTTP app: the page, its JSON API (`/api/*`) and Alertmanager's webhook.

Every `/api/*` route but sign-in needs a session; every mutating one also needs the
session's CSRF token in `X-CSRF-Token` and, when the browser sends one, an `Origin` equal
to the console's own. Calls to the admin APIs carry the console's token, never the page.
Errors of the services behind are handed back with their status and body; a service
that does not answer is a 502 naming it.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at
# runtime, and they refer to dependencies defined inside `create_app`.

import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field, SecretStr

from services.common.tracing import FASTAPI_TELEMETRY
from services.console.inbox import AlertInbox, WebhookDelivery
from services.console.overview import Overview
from services.console.readonly import ReadOnlyDatabase
from services.console.security import SecurityHeaders
from services.console.sessions import COOKIE, CSRF_HEADER, Session, SessionStore
from services.console.upstream import Alertmanager, Answer, Prometheus, Upstream, UpstreamError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
RetryState = Literal["PENDING", "IN_PROGRESS", "SUCCEEDED", "DEAD", "CANCELLED"]


class SignIn(BaseModel):
    token: str = Field(min_length=1, max_length=500)


class RetryFilter(BaseModel):
    """The page's filter; ages are minutes before now (the API takes timestamps)."""

    state: list[RetryState] = Field(default_factory=list)
    error_class: str | None = Field(default=None, max_length=200)
    key: str | None = Field(default=None, max_length=500)
    older_than_minutes: float | None = Field(default=None, ge=0, le=525_600)
    newer_than_minutes: float | None = Field(default=None, gt=0, le=525_600)

    def api_params(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        params: dict[str, Any] = {
            "state": self.state,
            "error_class": self.error_class or None,
            "key": self.key or None,
        }
        if self.older_than_minutes is not None:
            params["created_to"] = (now - timedelta(minutes=self.older_than_minutes)).isoformat()
        if self.newer_than_minutes is not None:
            params["created_from"] = (now - timedelta(minutes=self.newer_than_minutes)).isoformat()
        return {k: v for k, v in params.items() if v not in (None, [])}


class BulkRequest(RetryFilter):
    dry_run: bool = True
    limit: int = Field(default=1000, ge=1, le=10_000)


class BreakerForce(BaseModel):
    force: Literal["OPEN", "CLOSED"] | None


class ConsoleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "steadfast_console_upstream_calls",
            "Calls the console made to the services behind it",
            ["target"],
            registry=registry,
        )
        self.alerts = Counter(
            "steadfast_console_alerts_received",
            "Alerts delivered by Alertmanager's webhook",
            ["status"],
            registry=registry,
        )


def create_app(
    *,
    token: SecretStr,
    database_conninfo: str,
    api_url: str,
    warehouse_url: str,
    prometheus_url: str | None,
    alertmanager_url: str | None,
    refresh_seconds: float,
    session_seconds: float,
    upstream_timeout_seconds: float,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ConsoleMetrics(registry)
    sessions = SessionStore(token=token, ttl_seconds=session_seconds)
    inbox = AlertInbox()
    db = ReadOnlyDatabase(database_conninfo)

    async def count_call(request: httpx.Request) -> None:
        metrics.calls.labels(request.url.netloc.decode()).inc()

    client = httpx.AsyncClient(
        timeout=upstream_timeout_seconds,
        trust_env=False,
        limits=httpx.Limits(max_connections=20),
        event_hooks={"request": [count_call]},
    )
    api = Upstream("reservation API", api_url, client)
    warehouse = Upstream("warehouse mock", warehouse_url, client)
    prometheus = Prometheus("Prometheus", prometheus_url, client)
    alertmanager = Alertmanager("Alertmanager", alertmanager_url, client)
    overview = Overview(
        db=db,
        api=api,
        warehouse=warehouse,
        prometheus=prometheus,
        alertmanager=alertmanager,
        inbox=inbox,
        token=token,
        refresh_seconds=refresh_seconds,
    )
    expected_webhook = f"Bearer {token.get_secret_value()}".encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open()
        try:
            yield
        finally:
            await client.aclose()
            await db.close()

    app = FastAPI(
        title="steadfast ops console",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.add_middleware(SecurityHeaders)

    # -- authentication -------------------------------------------------------------------

    def signed_in(request: Request) -> Session:
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(401, "sign in first")
        return session

    def same_origin(request: Request) -> None:
        # Browsers send Origin on every cross-site POST/PUT/DELETE; a mismatch is another
        # site's page, whatever cookie it managed to attach.
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            raise HTTPException(403, "cross-origin request refused")
        if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")

    def mutating(
        request: Request,
        session: Annotated[Session, Depends(signed_in)],
        csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    ) -> Session:
        same_origin(request)
        if not sessions.csrf_ok(session, csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        return session

    Reader = Annotated[Session, Depends(signed_in)]
    Writer = Annotated[Session, Depends(mutating)]

    def relay(answer: Answer) -> JSONResponse:
        return JSONResponse(answer.body, status_code=answer.status)

    @app.exception_handler(UpstreamError)
    async def _unavailable(request: Request, exc: UpstreamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=502)

    def audit(action: str, **fields: Any) -> None:
        log.info(
            f"console {action}",
            extra={
                "event.action": f"console_{action}",
                **{f"console.{k}": v for k, v in fields.items()},
            },
        )

    # -- the page ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- session ----------------------------------------------------------------------------

    @app.post("/api/session")
    async def sign_in(body: SignIn, request: Request, response: Response) -> dict[str, Any]:
        same_origin(request)
        session = sessions.sign_in(body.token)
        if session is None:
            audit("sign_in_refused")
            raise HTTPException(401, "wrong admin token")
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(session_seconds),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        audit("signed_in")
        return {"signed_in": True, "csrf": session.csrf}

    @app.get("/api/session")
    async def current_session(request: Request) -> dict[str, Any]:
        # Read by the page's own script only: CORS keeps other origins from reading it.
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return {"signed_in": False}
        return {"signed_in": True, "csrf": session.csrf}

    @app.delete("/api/session")
    async def sign_out(session: Writer, response: Response) -> dict[str, Any]:
        sessions.sign_out(session.id)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return {"signed_in": False}

    # -- what every page polls --------------------------------------------------------------

    @app.get("/api/overview")
    async def get_overview(session: Reader) -> dict[str, Any]:
        return await overview.snapshot.get()

    @app.get("/api/charts")
    async def get_charts(session: Reader) -> dict[str, Any]:
        return await overview.charts.get()

    # -- orders -----------------------------------------------------------------------------

    @app.get("/api/orders/{order_id}")
    async def get_order(order_id: str, session: Reader) -> JSONResponse:
        if not _uuid_like(order_id):
            raise HTTPException(422, "an order id is a UUID")
        return relay(await api.call("GET", f"/orders/{order_id}"))

    @app.post("/api/orders")
    async def place_order(
        session: Writer,
        body: Annotated[dict[str, Any], Body()],
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        answer = await api.call("POST", "/orders", json=body, headers=headers)
        overview.snapshot.invalidate()
        return relay(answer)

    # -- retries ----------------------------------------------------------------------------

    @app.get("/api/retries")
    async def list_retries(
        session: Reader,
        state: Annotated[list[RetryState], Query()] = [],  # noqa: B006 (FastAPI copies it)
        error_class: str | None = None,
        key: str | None = None,
        older_than_minutes: Annotated[float | None, Query(ge=0)] = None,
        newer_than_minutes: Annotated[float | None, Query(gt=0)] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> JSONResponse:
        filters = RetryFilter(
            state=state,
            error_class=error_class,
            key=key,
            older_than_minutes=older_than_minutes,
            newer_than_minutes=newer_than_minutes,
        )
        params = _pairs({**filters.api_params(), "cursor": cursor, "limit": limit})
        return relay(await api.call("GET", "/admin/retries", params=params, token=token))

    @app.post("/api/retries/{row_id:int}/{action}")
    async def retry_action(row_id: int, action: str, session: Writer) -> JSONResponse:
        if action not in ("reprocess", "cancel"):
            raise HTTPException(404, f"no action {action!r}")
        answer = await api.call(
            "POST", f"/admin/retries/{row_id}/{action}", token=token, headers=_actor()
        )
        audit(f"retry_{action}", row=row_id, status=answer.status)
        overview.snapshot.invalidate()
        return relay(answer)

    @app.post("/api/retries/reprocess")
    async def bulk_reprocess(body: BulkRequest, session: Writer) -> JSONResponse:
        payload = {**body.api_params(), "dry_run": body.dry_run, "limit": body.limit}
        answer = await api.call(
            "POST", "/admin/retries/reprocess", json=payload, token=token, headers=_actor()
        )
        audit("bulk_reprocess", dry_run=body.dry_run, status=answer.status)
        overview.snapshot.invalidate()
        return relay(answer)

    # -- breaker ----------------------------------------------------------------------------

    @app.post("/api/breaker")
    async def force_breaker(body: BreakerForce, session: Writer) -> JSONResponse:
        answer = await api.call(
            "POST", "/admin/breaker", json={"force": body.force}, token=token, headers=_actor()
        )
        audit("breaker_force", force=body.force or "automatic", status=answer.status)
        overview.snapshot.invalidate()
        return relay(answer)

    # -- warehouse mock ---------------------------------------------------------------------

    @app.put("/api/warehouse/faults")
    async def put_faults(session: Writer, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        answer = await warehouse.call("PUT", "/admin/faults", json=body, token=token)
        audit("faults_configured", status=answer.status)
        overview.snapshot.invalidate()
        return relay(answer)

    @app.post("/api/warehouse/reset")
    async def reset_warehouse(session: Writer) -> JSONResponse:
        answer = await warehouse.call("POST", "/admin/reset", token=token)
        audit("warehouse_reset", status=answer.status)
        overview.snapshot.invalidate()
        return relay(answer)

    # -- Alertmanager's webhook -------------------------------------------------------------

    @app.post("/alertmanager/webhook")
    async def webhook(
        delivery: WebhookDelivery,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, int]:
        if not secrets.compare_digest((authorization or "").encode(), expected_webhook):
            raise HTTPException(401, "missing or wrong bearer token")
        received = inbox.receive(delivery)
        for alert in delivery.alerts:
            metrics.alerts.labels(alert.status).inc()
        overview.snapshot.invalidate()
        return {"received": received}

    app.state.overview = overview
    app.state.db = db
    app.state.started = time.monotonic()
    return app


def _actor() -> dict[str, str]:
    return {"X-Actor": "ops-console"}


def _pairs(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Query pairs; a list value repeats its key (`state=DEAD&state=PENDING`)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list):
            pairs += [(key, item) for item in value]
        else:
            pairs.append((key, value))
    return pairs


def _uuid_like(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
