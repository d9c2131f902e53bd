"""The core pipeline with real processes: relay → Kafka → consumer → warehouse mock.

Asserts outcomes in the database and in the mock's own stats, never in our logs alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from local.infra import libpq_url
from tests.integration.reservation.conftest import Pipeline, statuses
from tests.processes import assert_reserved_at_most_once, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]

BODY: dict[str, Any] = {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]}


async def _place(api: httpx.AsyncClient, n: int, body: dict[str, Any] = BODY) -> list[str]:
    ids = []
    for _ in range(n):
        response = await api.post("/orders", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def _wait_statuses(
    engine: AsyncEngine, expected: dict[str, int], within: float, pipe: Pipeline
) -> None:
    deadline = time.monotonic() + within
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = await statuses(engine)
        if seen == expected:
            return
        for proc in pipe.procs.values():
            assert proc.alive(), f"{proc.name} died:\n{proc.tail()}"
        await asyncio.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in pipe.procs.values())
    raise AssertionError(f"statuses {seen}, expected {expected}\n{tails}")


def _run(pipe: Pipeline) -> None:
    pipe.start("relay", "steadfast-relay")
    pipe.start("consumer", "steadfast-consumer")


async def test_orders_are_reserved_and_redelivery_is_a_no_op(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    _run(pipeline)
    await _place(api, 20)
    await _wait_statuses(api_engine, {"RESERVED": 20}, 60, pipeline)
    # Replay every event with its original id and headers, as a rebalance or a
    # producer retry would: the consumer must not call the warehouse again.
    async with api_engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT key, payload, headers, event_id FROM outbox"))
        ).all()
    lines_before = pipeline.warehouse_stats()["lines"]
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    for row in rows:
        headers = {**row.headers, "event_id": str(row.event_id)}
        producer.produce(
            pipeline.topic,
            key=row.key.encode(),
            value=json.dumps(row.payload).encode(),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
    assert producer.flush(10) == 0
    wait_until(lambda: sum(pipeline.lag().values()) == 0, 30, "consumer to catch up")
    stats = pipeline.warehouse_stats()
    assert stats["reservations"] == 20
    assert_reserved_at_most_once(stats)
    assert stats["lines"] == lines_before == 20  # the redelivered events made no call
    assert await statuses(api_engine) == {"RESERVED": 20}


async def test_offset_is_committed_only_after_the_database_write(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    _run(pipeline)
    await _place(api, 1)
    await _wait_statuses(api_engine, {"RESERVED": 1}, 60, pipeline)
    wait_until(lambda: sum(pipeline.lag().values()) == 0, 30, "first commit")
    # Block writes (not reads) to the table the consumer records into: its write waits
    # after the warehouse call.
    with psycopg.connect(libpq_url(pipeline.database_url)) as blocker:
        blocker.execute("LOCK TABLE processed_events IN SHARE MODE")
        await _place(api, 1)
        wait_until(
            lambda: pipeline.warehouse_stats()["reservations"] == 2, 30, "the warehouse call"
        )
        # Well past the consumer's 1 s commit interval: the offset must not move.
        for _ in range(4):
            await asyncio.sleep(1)
            assert sum(pipeline.lag().values()) == 1
        blocker.rollback()
    await _wait_statuses(api_engine, {"RESERVED": 2}, 30, pipeline)
    wait_until(lambda: sum(pipeline.lag().values()) == 0, 30, "commit after the write")


async def test_out_of_stock_is_rejected_and_cancel_releases_stock(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    _run(pipeline)
    [rejected] = await _place(
        api, 1, {"customer_id": "c", "items": [{"sku": "OOS-9", "quantity": 1}]}
    )
    [kept, cancelled] = await _place(api, 2)
    await _wait_statuses(api_engine, {"RESERVED": 2, "REJECTED": 1}, 60, pipeline)
    order = (await api.get(f"/orders/{rejected}")).json()
    assert order["status"] == "REJECTED"
    assert "OOS-9" in order["status_reason"]
    assert (await api.post(f"/orders/{cancelled}/cancel")).status_code == 202
    await _wait_statuses(api_engine, {"RESERVED": 1, "REJECTED": 1, "CANCELLED": 1}, 60, pipeline)
    journey = [s["status"] for s in (await api.get(f"/orders/{cancelled}")).json()["journey"]]
    assert journey[0] == "PENDING" and journey[-1] == "CANCELLED"
    assert "RESERVED" in journey
    stats = pipeline.warehouse_stats()
    assert stats["releases"] == 1
    assert stats["out_of_stock"] == 1
    assert (await api.get(f"/orders/{kept}")).json()["status"] == "RESERVED"


async def test_a_backlog_that_outlasts_the_poll_interval_keeps_the_consumer_in_the_group(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    # The backlog is in Kafka before the consumer starts, larger than faust's stream buffer
    # (1024), and draining it (4 events per batch, 40 ms per call) takes a few times
    # max_poll_interval.
    # Fetched in one piece, faust would sit on that fetch behind its full buffer, the Kafka
    # client would see no fetch for that long, leave the group and never come back.
    n = 1400
    await _place(api, n)
    pipeline.start("relay", "steadfast-relay")
    await _wait_outbox_published(api_engine, n, within=30)
    pipeline.set_faults({"latency": {"kind": "fixed", "ms": 40}})
    pipeline.start(
        "consumer",
        "steadfast-consumer",
        STEADFAST_BATCH_MAX_MESSAGES="4",
        # A fetch stays small next to what a batch drains (see KafkaConfig.max_poll_records).
        STEADFAST_KAFKA__MAX_POLL_RECORDS="8",
        STEADFAST_KAFKA__MAX_POLL_INTERVAL_SECONDS="3",
    )
    await _wait_statuses(api_engine, {"RESERVED": n}, within=90, pipe=pipeline)
    left = [r for r in pipeline.procs["consumer"].logs() if "LeaveGroup" in r.get("message", "")]
    assert not left, left
    assert_reserved_at_most_once(pipeline.warehouse_stats())


async def _wait_outbox_published(engine: AsyncEngine, n: int, within: float) -> None:
    deadline = time.monotonic() + within
    published = 0
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            published = (
                await conn.execute(
                    text("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
                )
            ).scalar_one()
        if published >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{published} of {n} outbox rows published")
