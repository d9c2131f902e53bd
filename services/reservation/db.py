"""Queries on the reservation tables. Every function runs on the caller's connection,
so the caller decides the transaction (an order and its outbox event commit together).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, func, insert, literal, select, tuple_, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.reservation.domain import OrderStatus
from services.reservation.schema import order_status_history as history
from services.reservation.schema import orders


@dataclass(frozen=True)
class OrderRow:
    id: UUID
    customer_id: str
    items: list[dict[str, Any]]
    status: OrderStatus
    status_reason: str | None
    attempts: int
    idempotency_key: str | None
    request_hash: str | None
    trace_id: str | None
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None
    cancel_requested_at: datetime | None

    @classmethod
    def from_mapping(cls, row: RowMapping) -> OrderRow:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["status"] = OrderStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True)
class Transition:
    """The result of a status change that happened (None is returned when it did not)."""

    order_id: UUID
    previous: OrderStatus
    status: OrderStatus
    created_at: datetime
    updated_at: datetime


async def insert_order(
    conn: AsyncConnection,
    *,
    order_id: UUID,
    customer_id: str,
    items: list[dict[str, Any]],
    idempotency_key: str | None,
    request_hash: str,
    trace_id: str | None,
) -> OrderRow:
    """Insert the order and its first journey step in one statement.

    One round trip rather than two: placing an order is the API's hot path, and each
    statement costs a round trip through the async driver. A duplicate idempotency key
    still raises IntegrityError, as a plain INSERT would.
    """
    placed = (
        insert(orders)
        .values(
            id=order_id,
            customer_id=customer_id,
            items=items,
            status=OrderStatus.PENDING,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            trace_id=trace_id,
        )
        .returning(*orders.c)
        .cte("placed")
    )
    first_step = insert(history).from_select(
        ["order_id", "status", "reason"],
        select(placed.c.id, placed.c.status, literal("order placed")),
    )
    statement = select(placed).add_cte(first_step.cte("first_step"))
    row = (await conn.execute(statement)).mappings().one()
    return OrderRow.from_mapping(row)


async def get_order(conn: AsyncConnection, order_id: UUID) -> OrderRow | None:
    row = (await conn.execute(select(orders).where(orders.c.id == order_id))).mappings().first()
    return OrderRow.from_mapping(row) if row else None


async def get_by_idempotency_key(conn: AsyncConnection, key: str) -> OrderRow | None:
    row = (
        (await conn.execute(select(orders).where(orders.c.idempotency_key == key)))
        .mappings()
        .first()
    )
    return OrderRow.from_mapping(row) if row else None


async def journey(conn: AsyncConnection, order_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            history.c.status, history.c.reason, history.c.attempt, history.c.details, history.c.at
        )
        .where(history.c.order_id == order_id)
        .order_by(history.c.id)
    )
    return [dict(r) for r in rows.mappings()]


def encode_cursor(created_at: datetime, order_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(order_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raise ValueError for anything that is not a cursor this service issued."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, oid = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(created), UUID(oid)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


async def list_orders(
    conn: AsyncConnection,
    *,
    statuses: Sequence[OrderStatus] = (),
    limit: int,
    cursor: str | None,
) -> tuple[list[OrderRow], str | None]:
    """Newest first, keyset-paginated on (created_at, id) so pages never shift."""
    query = select(orders)
    if statuses:
        query = query.where(orders.c.status.in_([s.value for s in statuses]))
    if cursor:
        created_at, order_id = decode_cursor(cursor)
        query = query.where(tuple_(orders.c.created_at, orders.c.id) < (created_at, order_id))
    query = query.order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit + 1)
    rows = [OrderRow.from_mapping(r) for r in (await conn.execute(query)).mappings()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


async def transition(
    conn: AsyncConnection,
    order_id: UUID,
    to: OrderStatus,
    *,
    allowed_from: Iterable[OrderStatus],
    reason: str,
    attempt: int | None = None,
    details: dict[str, Any] | None = None,
) -> Transition | None:
    """Move an order to `to` if it is in one of `allowed_from`, and record the step.

    Returns None when the order is elsewhere (already final, or unknown): a redelivered
    or late event then changes nothing.
    """
    allowed = [s.value for s in allowed_from]
    previous = select(orders.c.status).where(orders.c.id == order_id).scalar_subquery()
    stmt = (
        update(orders)
        .where(and_(orders.c.id == order_id, orders.c.status.in_(allowed)))
        .values(
            status=to.value,
            status_reason=reason,
            updated_at=func.now(),
            attempts=attempt if attempt is not None else orders.c.attempts,
            finalized_at=func.now() if to.is_final else None,
        )
        .returning(orders.c.id, orders.c.created_at, orders.c.updated_at, previous.label("prev"))
    )
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    await conn.execute(
        insert(history).values(
            order_id=order_id, status=to.value, reason=reason, attempt=attempt, details=details
        )
    )
    return Transition(
        order_id=order_id,
        previous=OrderStatus(row["prev"]),
        status=to,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def note(
    conn: AsyncConnection,
    order_id: UUID,
    *,
    reason: str,
    attempt: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add a journey step without changing the status (e.g. a parked follow-up event)."""
    status = select(orders.c.status).where(orders.c.id == order_id).scalar_subquery()
    await conn.execute(
        insert(history).values(
            order_id=order_id, status=status, reason=reason, attempt=attempt, details=details
        )
    )


async def request_cancel(conn: AsyncConnection, order_id: UUID) -> bool:
    """Stamp the cancel request; False when one was already made (the repeat is a no-op)."""
    result = await conn.execute(
        update(orders)
        .where(and_(orders.c.id == order_id, orders.c.cancel_requested_at.is_(None)))
        .values(cancel_requested_at=func.now(), updated_at=func.now())
    )
    if result.rowcount:
        await note(conn, order_id, reason="cancel requested")
    return bool(result.rowcount)


async def counts_by_status(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
    return {status: count for status, count in rows.tuples()}
