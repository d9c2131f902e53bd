"""Poison on the topic, through the real broker and the real consumer process.

tests/integration/reservation/test_reservation_resilience.py already sends bytes that are
not JSON and a 900 kB truncated body. These are the rest of the bad input a topic can
carry: JSON of the wrong shape, an unknown event type, a future schema version, an empty
value and a tombstone, no key, no headers, headers and keys that are not UTF-8 or hold NUL.
Each must be parked DEAD in the retry table with its reason, while real orders placed
after them are still reserved and the consumer never falls into its retry-in-place loop
(the crash loop a poison message would cause).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from local.infra import free_port
from tests.integration.reservation.conftest import (  # noqa: F401 (fixtures)
    Pipeline,
    api,
    api_engine,
    pipeline,
    statuses,
)

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]

ORDER = str(uuid.uuid4())
PLACED = {
    "event_type": "OrderPlaced",
    "schema_version": 1,
    "order_id": ORDER,
    "customer_id": "c-1",
    "items": [{"sku": "SKU-1", "quantity": 1}],
    "placed_at": "2026-01-01T00:00:00Z",
}
Headers = list[tuple[str, bytes]]
# key -> (value, headers, the error class it must be parked with)
POISON: dict[str, tuple[bytes | None, Headers | None, str]] = {
    "wrong-shape": (b"[1, 2, 3]", [("event_type", b"OrderPlaced")], "schema"),
    "unknown-type": (
        json.dumps({**PLACED, "event_type": "OrderShipped"}).encode(),
        [("event_type", b"OrderShipped")],
        "schema",
    ),
    "schema-v2": (
        json.dumps({**PLACED, "schema_version": 2}).encode(),
        [("event_type", b"OrderPlaced"), ("schema_version", b"2")],
        "schema",
    ),
    "extra-field": (json.dumps({**PLACED, "surprise": True}).encode(), None, "schema"),
    "empty": (b"", None, "decode"),
    "tombstone": (None, None, "decode"),
    "bad-headers": (b"{", [("event_type", b"\xff\xfe"), ("traceparent", b"\x00\x01")], "decode"),
}
YEAR_9999_MS = 253_402_300_799_000
NO_KEY_VALUE = b'{"event_type": "OrderPlaced", "schema_version": 1}'


def accept_any_create_time(bootstrap: str, topic: str) -> None:
    """Kafka 4 refuses a record stamped more than an hour ahead
    (`message.timestamp.after.max.ms`, KIP-937), together with the rest of its batch; a
    cluster may allow it, so the consumer must still cope."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.after.max.ms",
                str(2**63 - 1),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=15)


async def _dead_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        query = text("SELECT key, state, error_class, last_error, payload FROM retry_messages")
        return list((await conn.execute(query)).all())


async def test_poison_of_every_kind_is_parked_and_the_consumer_goes_on(
    pipeline: Pipeline,  # noqa: F811
    api: httpx.AsyncClient,  # noqa: F811
    api_engine: AsyncEngine,  # noqa: F811
) -> None:
    ports = {name: str(free_port()) for name in ("relay", "consumer")}
    pipeline.start("relay", "steadfast-relay", STEADFAST_METRICS_PORT=ports["relay"])
    consumer = pipeline.start(
        "consumer", "steadfast-consumer", STEADFAST_METRICS_PORT=ports["consumer"]
    )
    accept_any_create_time(pipeline.bootstrap, pipeline.topic)
    refused: list[str] = []

    def sent(err: Any, msg: Any) -> None:
        if err is not None:
            refused.append(str(err))

    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    for key, (value, headers, _) in POISON.items():
        producer.produce(pipeline.topic, key=key.encode(), value=value, headers=headers)
    producer.produce(pipeline.topic, value=NO_KEY_VALUE)  # no key, no headers
    producer.produce(pipeline.topic, key=b"\x00\xff-key", value=b"\x00")
    # A CreateTime in the year 9999 (the last second Python's datetime holds).
    producer.produce(
        pipeline.topic, key=b"year-9999", value=b"[1]", timestamp=YEAR_9999_MS, on_delivery=sent
    )
    assert producer.flush(10) == 0

    placed = []
    for _ in range(2):
        response = await api.post(
            "/orders", json={"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]}
        )
        assert response.status_code == 202, response.text
        placed.append(response.json()["id"])

    assert not refused, refused
    expected = len(POISON) + 3
    deadline = time.monotonic() + 60
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = await _dead_rows(api_engine)
        if len(rows) >= expected and (await statuses(api_engine)) == {"RESERVED": 2}:
            break
        assert consumer.alive(), consumer.tail()
        await asyncio.sleep(0.25)
    assert await statuses(api_engine) == {"RESERVED": 2}, consumer.tail()
    assert len(rows) == expected, (rows, consumer.tail())

    by_key = {row.key: row for row in rows}
    for key, (value, _, error_class) in POISON.items():
        row = by_key[key]
        assert (row.state, row.error_class) == ("DEAD", error_class), (key, row)
        assert row.last_error, key  # the reason an operator reads in /admin/retries
        assert row.payload == (value or b""), key
    assert (by_key["year-9999"].state, by_key["year-9999"].error_class) == ("DEAD", "schema")
    keyless = [row for row in rows if row.key is None]
    assert len(keyless) == 1 and keyless[0].state == "DEAD"
    assert keyless[0].error_class == "schema"
    garbled = [row for row in rows if row.key not in POISON and row.key not in (None, "year-9999")]
    assert len(garbled) == 1 and garbled[0].state == "DEAD"
    assert "\x00" not in garbled[0].key  # PostgreSQL text cannot hold NUL: kept escaped

    assert consumer.alive()
    actions = [record.get("event.action") for record in consumer.logs()]
    assert "consumer_retry_in_place" not in actions, consumer.tail()
