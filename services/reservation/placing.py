"""Placing an order: the order, its first journey step and its outbox event in one statement.

The API's hot path, so one round trip on an autocommit connection: a single statement is
its own transaction, so the three rows commit together or not at all, and the relay is
woken (NOTIFY) only by a commit. Idempotency is `ON CONFLICT` on the key, not a pre-read:
a repeat inserts nothing and the statement returns the order the key already made.

psycopg rather than SQLAlchemy Core here: the statement is fixed, and the Core layer
(compilation cache look-up, result wrapping, an implicit BEGIN and a ROLLBACK on
checkin) cost more than the statement itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from outbox.store import DEFAULT_CHANNEL
from services.reservation.db import OrderRow
from services.reservation.domain import OrderPlaced, PlaceOrder
from services.reservation.errors import IdempotencyConflict

Writer = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]
"""An autocommit psycopg connection for the hot path (a pool's `connection`)."""


def direct_writer(conninfo: str) -> Writer:
    """A writer that connects per call, without a pool: for tests and tools that run the
    app in more than one event loop (a pool belongs to the loop that opened it)."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[AsyncConnection[Any]]:
        async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
            yield conn

    return connect


PLACE_SQL = """
WITH placed AS (
    INSERT INTO orders (id, customer_id, items, status, idempotency_key, request_hash, trace_id)
    VALUES (%(id)s, %(customer_id)s, %(items)s, 'PENDING', %(key)s, %(hash)s, %(trace_id)s)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *
), step AS (
    INSERT INTO order_status_history (order_id, status, reason)
    SELECT id, status, 'order placed' FROM placed
), event AS (
    INSERT INTO outbox (event_id, aggregate_id, topic, key, payload, headers)
    SELECT %(event_id)s, id::text, %(topic)s, id::text,
           jsonb_set(%(payload)s::jsonb, '{placed_at}', to_jsonb(created_at)), %(headers)s
      FROM placed
)
SELECT false AS replayed, p.*, pg_notify(%(channel)s, '') IS NULL AS notified
  FROM placed AS p
UNION ALL
SELECT true, o.*, true FROM orders AS o
 WHERE %(key)s::text IS NOT NULL AND o.idempotency_key = %(key)s
   AND NOT EXISTS (SELECT 1 FROM placed)
"""

_PLACEHOLDER_TIME = datetime(1970, 1, 1, tzinfo=UTC)

# The key's order committed by another request after this statement's snapshot was taken:
# the insert waited for it and did nothing, and the snapshot could not see it.
REPLAY_SQL = "SELECT true AS replayed, o.* FROM orders AS o WHERE o.idempotency_key = %(key)s"


async def place(
    conn: AsyncConnection[Any],
    body: PlaceOrder,
    *,
    idempotency_key: str | None,
    traceparent: str,
    trace_id: str | None,
    topic: str,
) -> tuple[OrderRow, bool]:
    """The order (new, or the one its key made before) and whether it is a replay."""
    order_id = uuid.uuid4()
    request_hash = body.request_hash()
    event = OrderPlaced(
        order_id=order_id,
        customer_id=body.customer_id,
        items=body.items,
        placed_at=_PLACEHOLDER_TIME,  # the database's created_at replaces it
    )
    params = {
        "id": order_id,
        "customer_id": body.customer_id,
        "items": Jsonb([item.model_dump() for item in body.items]),
        "key": idempotency_key,
        "hash": request_hash,
        "trace_id": trace_id,
        "event_id": uuid.uuid4(),
        "topic": topic,
        "channel": DEFAULT_CHANNEL,
        "payload": Jsonb(event.model_dump(mode="json")),
        "headers": Jsonb(
            {
                "event_type": event.event_type,
                "schema_version": str(event.schema_version),
                "traceparent": traceparent,
                "content_type": "application/json",
            }
        ),
    }
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(PLACE_SQL, params)
        row = await cur.fetchone()
        if row is None and idempotency_key is not None:
            await cur.execute(REPLAY_SQL, {"key": idempotency_key})
            row = await cur.fetchone()
    if row is None:  # pragma: no cover (an insert without a key cannot conflict)
        raise RuntimeError("the order was neither inserted nor found")
    order = OrderRow.from_mapping(row)  # type: ignore[arg-type]
    replayed = bool(row["replayed"])
    if replayed and order.request_hash != request_hash:
        raise IdempotencyConflict("Idempotency-Key was already used with a different request body")
    return order, replayed
