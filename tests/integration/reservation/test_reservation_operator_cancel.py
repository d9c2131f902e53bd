"""An operator's cancel of a parked placement: the retry row and the order change in one
transaction, or neither does."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from retry import batch_sql
from retry.model import Message
from retry.rows import RetryRow
from services.reservation.domain import OrderItem, PlaceOrder
from services.reservation.handler import HANDLER_NAME, settle_cancelled_row
from services.reservation.placing import place
from tests.integration.retry_engine.engine_support import Rig

pytestmark = pytest.mark.postgres


async def _parked_placement(rig: Rig) -> tuple[str, int]:
    body = PlaceOrder(customer_id="c-1", items=[OrderItem(sku="SKU-1", quantity=1)])
    async with rig.pool.connection() as conn:
        order, _ = await place(
            conn,
            body,
            idempotency_key=None,
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            trace_id="1" * 32,
            topic="orders",
        )
        cur = await conn.execute("SELECT payload::text, headers FROM outbox")
        payload, headers = await cur.fetchone()  # type: ignore[misc]
        await conn.execute("UPDATE orders SET status = 'RETRY_PENDING'")
        message = Message(
            topic="orders",
            key=str(order.id),
            value=payload.encode(),
            partition=0,
            offset=0,
            headers={**headers, "event_id": "e-1"},
        )
        parked = await batch_sql.park(
            conn,
            HANDLER_NAME,
            [
                batch_sql.ParkRow(
                    message=message,
                    error_class="http_503",
                    reason="down",
                    attempt=1,
                    max_attempts=8,
                    delay=60,
                    state="PENDING",
                    outcome="parked",
                )
            ],
            by="test",
        )
    return str(order.id), parked["e-1"][0]


async def _state(rig: Rig, row_id: int) -> tuple[str, str]:
    async with rig.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.state, o.status FROM retry_messages r JOIN orders o "
                    "ON o.id::text = r.key WHERE r.id = :id"
                ),
                {"id": row_id},
            )
        ).one()
    return row.state, row.status


async def test_the_row_and_its_order_change_together(rig: Rig) -> None:
    _, row_id = await _parked_placement(rig)
    assert await rig.store.cancel(
        row_id, "op", reason="customer called", settle=settle_cancelled_row
    )
    assert await _state(rig, row_id) == ("CANCELLED", "DEAD")


async def test_a_failing_settle_leaves_both_as_they_were(rig: Rig) -> None:
    _, row_id = await _parked_placement(rig)

    async def half_way(conn: AsyncConnection, row: RetryRow) -> None:
        await settle_cancelled_row(conn, row)
        raise RuntimeError("crash after the order changed")

    with pytest.raises(RuntimeError):
        await rig.store.cancel(row_id, "op", settle=half_way)
    assert await _state(rig, row_id) == ("PENDING", "RETRY_PENDING")
