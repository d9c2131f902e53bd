"""The idempotent consumer's memory: which events reached a final outcome.

Both calls run in the caller's transaction, so "this event is done" commits exactly with
the application's own change. A redelivered or re-driven event that is already recorded
is a no-op.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from retry.schema import processed_events

__all__ = ["already_processed", "mark_processed"]


async def already_processed(conn: AsyncConnection, event_id: str) -> bool:
    stmt = select(processed_events.c.event_id).where(processed_events.c.event_id == event_id)
    return (await conn.execute(stmt)).first() is not None


async def mark_processed(conn: AsyncConnection, event_id: str, handler: str, outcome: str) -> bool:
    """Record `event_id` as done with `outcome`; True if this call recorded it first."""
    stmt = (
        insert(processed_events)
        .values(event_id=event_id, handler=handler, outcome=outcome)
        .on_conflict_do_nothing(index_elements=[processed_events.c.event_id])
        .returning(processed_events.c.event_id)
    )
    return (await conn.execute(stmt)).first() is not None
