"""The writer: one shared statement builder for the async and sync APIs, and the NOTIFY."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from outbox.store import CLAIM_SQL, DEFAULT_CHANNEL, OutboxEvent, add_events, add_events_sync


class RecordingConnection:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def execute(self, statement: ClauseElement, params: Any = None) -> None:
        sql = str(statement.compile(dialect=postgresql.dialect()))
        self.calls.append((sql, params))


class AsyncRecordingConnection(RecordingConnection):
    async def execute(self, statement: ClauseElement, params: Any = None) -> None:  # type: ignore[override]
        super().execute(statement, params)


def _event(key: str) -> OutboxEvent:
    return OutboxEvent(
        event_id=uuid.uuid4(),
        aggregate_id=key,
        topic="t",
        key=key,
        payload={"k": key},
        headers={"event_type": "E"},
    )


def test_sync_writer_inserts_every_event_in_order_then_notifies() -> None:
    conn = RecordingConnection()
    events = [_event("a"), _event("b")]

    add_events_sync(conn, events, channel="my_channel")  # type: ignore[arg-type]

    (insert_sql, rows), (notify_sql, notify_params) = conn.calls
    assert insert_sql.startswith("INSERT INTO outbox")
    assert [row["event_id"] for row in rows] == [e.event_id for e in events]
    assert rows[0] == {
        "event_id": events[0].event_id,
        "aggregate_id": "a",
        "topic": "t",
        "key": "a",
        "payload": {"k": "a"},
        "headers": {"event_type": "E"},
    }
    assert "pg_notify" in notify_sql
    assert notify_params == {"channel": "my_channel"}


async def test_async_writer_issues_the_same_statements() -> None:
    sync_conn, async_conn = RecordingConnection(), AsyncRecordingConnection()
    events = [_event("a")]

    add_events_sync(sync_conn, events)  # type: ignore[arg-type]
    await add_events(async_conn, events)  # type: ignore[arg-type]

    assert async_conn.calls == sync_conn.calls
    assert async_conn.calls[-1][1] == {"channel": DEFAULT_CHANNEL}


async def test_no_events_means_no_statements() -> None:
    conn, async_conn = RecordingConnection(), AsyncRecordingConnection()
    add_events_sync(conn, [])  # type: ignore[arg-type]
    await add_events(async_conn, iter([]))  # type: ignore[arg-type]
    assert conn.calls == async_conn.calls == []


def test_the_claim_is_one_statement_that_locks_skips_and_leases() -> None:
    sql = " ".join(str(CLAIM_SQL).split())
    assert sql.count(";") == 0
    assert "FOR UPDATE OF o SKIP LOCKED" in sql
    assert "ORDER BY o.id LIMIT :batch_size" in sql
    assert "now() + make_interval(secs => :lease_seconds)" in sql
    assert "SELECT * FROM claimed ORDER BY id" in sql
