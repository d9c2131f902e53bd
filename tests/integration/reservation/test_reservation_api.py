"""The REST API on a real PostgreSQL: one transaction per order, idempotency, pagination."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from local.infra import sqlalchemy_url
from services.reservation.api import create_api
from services.reservation.app import psycopg_pool

TOPIC = "reservations.order-events"
BODY: dict[str, Any] = {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 2}]}

pytestmark = pytest.mark.postgres


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    pool = psycopg_pool(database_url, 10, name="test-api")  # as run_api builds it
    await pool.open()
    app = create_api(
        engine=engine,
        writer=pool.connection,
        registry=CollectorRegistry(),
        topic=TOPIC,
        max_body_bytes=16 * 1024,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
    await pool.close()


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_an_order_and_its_event_are_written_together(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post("/orders", json=BODY, headers={"traceparent": _traceparent()})
    assert response.status_code == 202, response.text
    order = response.json()
    assert response.headers["Location"] == f"/orders/{order['id']}"
    assert order["status"] == "PENDING"
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT topic, key, payload, headers FROM outbox"))).one()
    assert row.topic == TOPIC
    assert row.key == order["id"]
    assert row.payload["event_type"] == "OrderPlaced"
    assert row.payload["items"] == BODY["items"]
    assert row.headers["event_type"] == "OrderPlaced"
    assert row.headers["schema_version"] == "1"
    # The trace continues the caller's: same trace id, new span.
    assert row.headers["traceparent"].split("-")[1] == _traceparent().split("-")[1]
    assert order["trace_id"] == _traceparent().split("-")[1]


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        (b"{not json", 422, "json"),
        (json.dumps({**BODY, "unknown": 1}).encode(), 422, "unknown"),
        (json.dumps({**BODY, "items": []}).encode(), 422, "items"),
        (json.dumps({**BODY, "items": [{"sku": "A", "quantity": "x"}]}).encode(), 422, "quantity"),
        (json.dumps({**BODY, "customer_id": "x" * 20_000}).encode(), 413, "exceeds"),
    ],
)
async def test_bad_requests_get_a_reason_and_write_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, content: bytes, status: int, reason: str
) -> None:
    response = await client.post(
        "/orders", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert reason in response.text.lower()
    assert await _count(engine, "orders") == 0
    assert await _count(engine, "outbox") == 0


async def test_idempotency_key_replays_and_refuses_reuse(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/orders", json=BODY, headers=headers)
    again = await client.post("/orders", json=BODY, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await client.post(
        "/orders", json={**BODY, "customer_id": "someone-else"}, headers=headers
    )
    assert other.status_code == 422
    assert "different request body" in other.json()["detail"]
    assert await _count(engine, "orders") == 1
    assert await _count(engine, "outbox") == 1


async def test_concurrent_requests_with_one_key_make_one_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *(client.post("/orders", json=BODY, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await _count(engine, "orders") == 1
    assert await _count(engine, "outbox") == 1


async def test_get_shows_the_journey_and_404s_unknown(client: httpx.AsyncClient) -> None:
    order = (await client.post("/orders", json=BODY)).json()
    got = await client.get(f"/orders/{order['id']}")
    assert got.status_code == 200
    journey = got.json()["journey"]
    assert [step["status"] for step in journey] == ["PENDING"]
    assert journey[0]["reason"] == "order placed"
    missing = await client.get(f"/orders/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert (await client.get("/orders/not-a-uuid")).status_code == 422


async def test_list_walks_every_order_once_with_the_cursor(client: httpx.AsyncClient) -> None:
    placed = {(await client.post("/orders", json=BODY)).json()["id"] for _ in range(7)}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 7 orders at 3 per page is 3 pages
        params: dict[str, Any] = {"limit": 3, "status": "PENDING"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/orders", params=params)).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(placed)
    assert (await client.get("/orders", params={"status": "RESERVED"})).json()["items"] == []
    assert (await client.get("/orders", params={"cursor": "garbage"})).status_code == 400
    assert (await client.get("/orders", params={"limit": 501})).status_code == 422


async def test_cancel_emits_one_event_and_refuses_final_orders(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    order = (await client.post("/orders", json=BODY)).json()
    first = await client.post(f"/orders/{order['id']}/cancel")
    second = await client.post(f"/orders/{order['id']}/cancel")
    assert first.status_code == second.status_code == 202
    assert first.json()["cancel_requested_at"] is not None
    async with engine.connect() as conn:
        events = (
            (
                await conn.execute(
                    text("SELECT payload->>'event_type' FROM outbox WHERE key = :k ORDER BY id"),
                    {"k": order["id"]},
                )
            )
            .scalars()
            .all()
        )
        await conn.execute(
            text("UPDATE orders SET status = 'REJECTED' WHERE id = :id"), {"id": order["id"]}
        )
        await conn.commit()
    assert events == ["OrderPlaced", "OrderCancelled"]
    refused = await client.post(f"/orders/{order['id']}/cancel")
    assert refused.status_code == 409
    assert "REJECTED" in refused.json()["detail"]
    assert (await client.post(f"/orders/{uuid.uuid4()}/cancel")).status_code == 404


async def test_health_ready_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    await client.post("/orders", json=BODY)
    metrics = (await client.get("/metrics")).text
    assert "steadfast_orders_placed_total 1.0" in metrics


def _traceparent() -> str:
    return "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
