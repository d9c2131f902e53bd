"""Fabricated orders and their OrderPlaced events, exactly as the API would write them.

The payload is `OrderPlaced.model_dump(mode="json")` and the headers are the API's outbox
headers (services/reservation/api.py `_outbox_event`); on the topic the relay adds
`event_id`. Rows go in with COPY, which fills 100k rows in about a second where
per-row INSERTs would take the bench's whole budget.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox.event import EVENT_ID_HEADER
from services.reservation.domain import OrderItem, OrderPlaced, OrderStatus

# A valid W3C traceparent with a fixed trace id: the benches do not trace.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SKUS = 50


@dataclass(frozen=True, slots=True)
class BenchOrder:
    order_id: uuid.UUID
    event_id: uuid.UUID
    customer_id: str
    items: list[dict[str, Any]]
    payload: str
    """The OrderPlaced event as JSON text."""
    headers: dict[str, str]
    """The API's outbox headers (without `event_id`, which the relay adds)."""

    def kafka_headers(self) -> list[tuple[str, str | bytes | None]]:
        """Headers as the relay publishes them: the row's, then `event_id`."""
        return [*self.headers.items(), (EVENT_ID_HEADER, str(self.event_id))]


def make_orders(count: int, seed: int = 0) -> Iterator[BenchOrder]:
    placed_at = dt.datetime.now(dt.UTC)
    namespace = uuid.UUID(int=seed)
    for i in range(count):
        order_id = uuid.uuid5(namespace, f"order-{i}")
        items = [OrderItem(sku=f"SKU-{i % SKUS}", quantity=1)]
        event = OrderPlaced(
            order_id=order_id, customer_id=f"bench-{i % 100}", items=items, placed_at=placed_at
        )
        yield BenchOrder(
            order_id=order_id,
            event_id=uuid.uuid4(),
            customer_id=event.customer_id,
            items=[item.model_dump() for item in items],
            payload=event.model_dump_json(),
            headers={
                "event_type": event.event_type,
                "schema_version": str(event.schema_version),
                "traceparent": TRACEPARENT,
                "content_type": "application/json",
            },
        )


def copy_outbox(conn: psycopg.Connection[Any], orders: list[BenchOrder], topic: str) -> None:
    """Insert one unpublished outbox row per order (the writer's columns only)."""
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY outbox (event_id, aggregate_id, topic, key, payload, headers) FROM STDIN"
        ) as copy,
    ):
        for o in orders:
            key = str(o.order_id)
            copy.write_row((o.event_id, key, topic, key, o.payload, json.dumps(o.headers)))
    conn.commit()


def copy_orders(conn: psycopg.Connection[Any], orders: list[BenchOrder]) -> None:
    """Insert PENDING orders (what the API's transaction writes next to the outbox row)."""
    sql = "COPY orders (id, customer_id, items, status) FROM STDIN"
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for o in orders:
            copy.write_row(
                (o.order_id, o.customer_id, json.dumps(o.items), OrderStatus.PENDING.value)
            )
    conn.commit()
