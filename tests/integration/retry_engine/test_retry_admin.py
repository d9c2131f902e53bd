"""The admin router over real PostgreSQL, through httpx's ASGI transport."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry.admin import AdminAction, make_admin_router, token_fingerprint
from retry.breaker import CircuitBreaker
from retry.clock import FakeClock
from retry.model import Classification, FailureKind, Message
from retry.store import RetryStore

pytestmark = pytest.mark.postgres

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Breaker:
    current: str = "CLOSED"
    forced: list[tuple[str | None, str]] = field(default_factory=list)

    async def state(self) -> str:
        return self.current

    async def snapshot(self) -> Mapping[str, Any]:
        return {"name": "warehouse", "state": self.current, "failures": 0}

    async def force(self, state: str | None, actor: str) -> None:
        self.forced.append((state, actor))
        self.current = state or "CLOSED"


@dataclass
class Api:
    client: httpx.AsyncClient
    engine: AsyncEngine
    store: RetryStore
    breaker: Breaker
    actions: list[AdminAction]

    async def park(
        self,
        n: int,
        *,
        state: str = "PENDING",
        error_class: str = "timeout",
        key: str | None = None,
        value: bytes = b'{"n": 1}',
    ) -> int:
        kind = FailureKind.RETRYABLE if state == "PENDING" else FailureKind.TERMINAL
        message = Message(
            topic="orders",
            value=value,
            key=key or f"k{n}",
            partition=0,
            offset=n,
            headers={"event_id": f"e{n}"},
        )
        async with self.engine.begin() as conn:
            parked = await self.store.park(
                conn,
                message,
                handler="h",
                classification=Classification(kind=kind, error_class=error_class, reason="boom"),
                attempt=1,
                delay_seconds=3600,
                max_attempts=4,
                state=state,
            )
        return parked.id


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    store = RetryStore(engine)
    breaker = Breaker()
    actions: list[AdminAction] = []
    app = FastAPI()
    app.include_router(
        make_admin_router(store, token=TOKEN, breaker=breaker, on_action=actions.append)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield Api(client, engine, store, breaker, actions)
    await engine.dispose()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/retries"),
        ("GET", "/admin/retries/1"),
        ("POST", "/admin/retries/1/reprocess"),
        ("POST", "/admin/retries/reprocess"),
        ("POST", "/admin/retries/1/cancel"),
        ("GET", "/admin/breaker"),
        ("POST", "/admin/breaker"),
    ],
)
async def test_every_route_needs_the_token(
    api: Api, headers: dict[str, str], method: str, path: str
) -> None:
    response = await api.client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_pagination_walks_every_row_once(api: Api) -> None:
    ids = {await api.park(n, state="DEAD" if n % 3 == 0 else "PENDING") for n in range(23)}
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = (await api.client.get("/admin/retries", params=params, headers=AUTH)).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 23 and set(seen) == ids
    assert seen == sorted(seen, reverse=True)  # newest first


async def test_list_filters(api: Api) -> None:
    dead = await api.park(1, state="DEAD", error_class="http_409")
    await api.park(2, error_class="timeout", key="order-7")
    pending_other = await api.park(3, error_class="timeout")

    async def ids(**params: Any) -> list[int]:
        response = await api.client.get("/admin/retries", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(state="DEAD") == [dead]
    assert len(await ids(state=["DEAD", "PENDING"])) == 3
    assert await ids(error_class="http_409") == [dead]
    assert len(await ids(key="order-7")) == 1
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(created_from=future) == []
    assert len(await ids(created_to=future)) == 3
    items = (await api.client.get("/admin/retries", headers=AUTH)).json()["items"]
    assert items[0]["id"] == pending_other and items[0]["state"] == "PENDING"
    assert "payload" not in items[0] and "history" not in items[0]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"state": "PARKED"},
        {"cursor": "not-a-cursor"},
        {"created_from": "2026-01-01T00:00:00"},
        {"created_from": "2026-01-02T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
    ],
)
async def test_bad_queries_are_422(api: Api, params: dict[str, Any]) -> None:
    response = await api.client.get("/admin/retries", params=params, headers=AUTH)
    assert response.status_code == 422, response.text


async def test_get_one_with_history_and_raw_payload(api: Api) -> None:
    raw = b"\xff\x00poison"
    row_id = await api.park(1, state="DEAD", error_class="decode", value=raw)
    body = (await api.client.get(f"/admin/retries/{row_id}", headers=AUTH)).json()
    assert base64.b64decode(body["payload_base64"]) == raw and body["payload_text"] is None
    assert body["headers"] == {"event_id": "e1"} and body["state"] == "DEAD"
    [entry] = body["history"]
    assert entry["outcome"] == "dead" and entry["error_class"] == "decode"
    assert (await api.client.get("/admin/retries/999", headers=AUTH)).status_code == 404


async def test_reprocess_one(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    row_id = await api.park(1, state="DEAD")
    caplog.set_level(logging.INFO, logger="retry.admin")
    response = await api.client.post(
        f"/admin/retries/{row_id}/reprocess", headers={**AUTH, "X-Actor": "alice"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "PENDING" and body["max_attempts"] == 5  # one more full round
    assert datetime.fromisoformat(body["next_attempt_at"]) <= datetime.now(UTC)
    [claimed] = await api.store.claim_due(10, "s", 30)  # the scheduler picks it up
    assert claimed.id == row_id
    assert (
        await api.client.post(f"/admin/retries/{row_id}/reprocess", headers=AUTH)
    ).status_code == 409
    assert (await api.client.post("/admin/retries/999/reprocess", headers=AUTH)).status_code == 404
    [record] = [r for r in caplog.records if getattr(r, "admin.action", None) == "reprocess"]
    assert getattr(record, "event.action") == "admin_action"
    actor = f"alice (token {token_fingerprint(TOKEN)})"
    assert getattr(record, "user.name") == actor and TOKEN not in record.getMessage()
    assert api.actions[-1] == AdminAction(actor, "reprocess", 1, target=str(row_id))


async def test_bulk_dry_run_changes_nothing(api: Api) -> None:
    for n in range(6):
        await api.park(n, state="DEAD", error_class="http_503" if n < 4 else "timeout")
    await api.park(9, error_class="http_503")  # PENDING also requeueable
    before = await snapshot(api.engine)
    body = {"error_class": "http_503", "dry_run": True, "limit": 10000}
    response = await api.client.post("/admin/retries/reprocess", json=body, headers=AUTH)
    assert response.json() == {"matched": 5, "requeued": 0, "dry_run": True, "limit": 10000}
    assert await snapshot(api.engine) == before
    assert api.actions[-1].dry_run is True and api.actions[-1].rows == 5


async def test_bulk_requeue_respects_filter_and_limit(api: Api) -> None:
    for n in range(6):
        await api.park(n, state="DEAD", error_class="http_503")
    await api.park(7, state="DEAD", error_class="http_409")
    body = {"state": ["DEAD"], "error_class": "http_503", "limit": 4}
    response = await api.client.post("/admin/retries/reprocess", json=body, headers=AUTH)
    assert response.json() == {"matched": 4, "requeued": 4, "dry_run": False, "limit": 4}
    counts = await api.store.counts_by_state()
    assert counts["PENDING"] == 4 and counts["DEAD"] == 3
    assert len(await api.store.claim_due(10, "s", 30)) == 4
    too_many = {"limit": 10001}
    response = await api.client.post("/admin/retries/reprocess", json=too_many, headers=AUTH)
    assert response.status_code == 422


async def test_cancel(api: Api) -> None:
    row_id = await api.park(1)
    response = await api.client.post(
        f"/admin/retries/{row_id}/cancel", json={"reason": "customer gone"}, headers=AUTH
    )
    assert response.status_code == 200 and response.json()["state"] == "CANCELLED"
    assert await api.store.claim_due(10, "s", 30) == []
    row = await api.store.get(row_id)
    assert row is not None and row.history[-1]["reason"] == "customer gone"
    assert (
        await api.client.post(f"/admin/retries/{row_id}/cancel", headers=AUTH)
    ).status_code == 409
    assert (await api.client.post("/admin/retries/999/cancel", headers=AUTH)).status_code == 404


async def test_breaker_endpoints(api: Api) -> None:
    body = (await api.client.get("/admin/breaker", headers=AUTH)).json()
    assert body == {
        "state": "CLOSED",
        "snapshot": {"name": "warehouse", "state": "CLOSED", "failures": 0},
    }
    response = await api.client.post(
        "/admin/breaker", json={"force": "OPEN"}, headers={**AUTH, "X-Actor": "bob"}
    )
    assert response.status_code == 200 and response.json()["state"] == "OPEN"
    response = await api.client.post("/admin/breaker", json={"force": None}, headers=AUTH)
    assert response.json()["state"] == "CLOSED"
    fp = token_fingerprint(TOKEN)
    assert api.breaker.forced == [("OPEN", f"bob (token {fp})"), (None, f"token {fp}")]
    bad = await api.client.post("/admin/breaker", json={"force": "HALF_OPEN"}, headers=AUTH)
    assert bad.status_code == 422


async def test_openapi_schema_is_exact(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    item = schema["components"]["schemas"]["RetryItem"]
    assert item["properties"]["state"]["enum"] == [
        "PENDING",
        "IN_PROGRESS",
        "SUCCEEDED",
        "DEAD",
        "CANCELLED",
    ]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


async def snapshot(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, state, attempts, max_attempts, next_attempt_at, history"
                " FROM retry_messages ORDER BY id"
            )
        )
        return [tuple(row) for row in result]


async def test_breaker_endpoints_with_the_shared_breaker(api: Api) -> None:
    shared = CircuitBreaker(api.engine, name="warehouse", clock=FakeClock())
    app = FastAPI()
    app.include_router(make_admin_router(api.store, token=TOKEN, breaker=shared))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        body = (await client.get("/admin/breaker", headers=AUTH)).json()
        assert body["state"] == "CLOSED" and body["snapshot"]["name"] == "warehouse"
        forced = await client.post("/admin/breaker", json={"force": "OPEN"}, headers=AUTH)
        assert forced.json()["state"] == "OPEN"
        assert forced.json()["snapshot"]["forced"] == "OPEN"
        assert await shared.allow() is False
        released = await client.post("/admin/breaker", json={"force": None}, headers=AUTH)
        assert released.json()["snapshot"]["forced"] is None
