"""The outbox table's operations: write in the caller's transaction, claim, mark, clean up.

Writers call `add_events` (async) or `add_events_sync` inside their own transaction, so an
event exists exactly when the business change that caused it commits. A relay uses
`OutboxStore` to lease batches of unpublished rows, then marks them published or releases
them. The database owns time: every lease and age is computed with `now()` in SQL.

Rows are claimed by `published_at IS NULL`, never after a "last published id" cursor:
ids are handed out at INSERT but become visible at COMMIT, so a transaction that took a
lower id and committed later would sit behind such a cursor and never be published.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Interval,
    any_,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from outbox.errors import StoreUnavailableError
from outbox.event import ClaimedEvent, OutboxEvent
from outbox.schema import outbox_table

__all__ = [
    "DEFAULT_CHANNEL",
    "ClaimedEvent",
    "OutboxEvent",
    "OutboxStore",
    "PendingStats",
    "add_events",
    "add_events_sync",
]

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "outbox"
"""The LISTEN/NOTIFY channel writers notify and relays listen on."""

_NOTIFY = text("SELECT pg_notify(:channel, '')")
_IDS = bindparam("ids", type_=ARRAY(BigInteger))


def _rows(events: Iterable[OutboxEvent]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "topic": event.topic,
            "key": event.key,
            "payload": event.payload,
            "headers": event.headers,
        }
        for event in events
    ]


async def add_events(
    conn: AsyncConnection, events: Iterable[OutboxEvent], *, channel: str = DEFAULT_CHANNEL
) -> None:
    """Insert `events` in `conn`'s transaction, in order, and wake relays at its commit.

    PostgreSQL delivers the notification only if the transaction commits, and folds
    duplicates within one transaction, so a rolled-back write wakes nobody.
    """
    rows = _rows(events)
    if rows:
        await conn.execute(outbox_table.insert(), rows)
        await conn.execute(_NOTIFY, {"channel": channel})


def add_events_sync(
    conn: Connection, events: Iterable[OutboxEvent], *, channel: str = DEFAULT_CHANNEL
) -> None:
    """`add_events` for callers on a sync `Connection` (same statements)."""
    rows = _rows(events)
    if rows:
        conn.execute(outbox_table.insert(), rows)
        conn.execute(_NOTIFY, {"channel": channel})


# The claim is hand-written SQL on purpose: this statement is the pattern the project is
# about, and it must read as one piece. Rules, in order:
#  - only unpublished rows whose lease is free or expired, by id, at most :batch_size,
#    skipping rows another relay is claiming right now (SKIP LOCKED);
#  - per-key order across relays: a row is claimed only if every earlier unpublished row
#    with its key is claimed in this same statement. `candidate` already leaves out keys
#    whose earlier row is leased (so a blocked key does not fill the window); `eligible`
#    also catches earlier rows that SKIP LOCKED passed over, by checking that the number
#    of earlier unpublished rows of the key equals the number of them among the candidates.
# Both checks are scalar subqueries on purpose: PostgreSQL runs them per candidate as
# probes of ix_outbox_unpublished_key, so a claim costs O(batch), whatever the backlog.
# (Written as NOT EXISTS, the planner hashes every unpublished row on each claim.)
CLAIM_SQL = text(
    """
WITH candidate AS MATERIALIZED (
    SELECT o.id, o.key
    FROM outbox AS o
    WHERE o.published_at IS NULL
      AND (o.locked_until IS NULL OR o.locked_until <= now())
      AND (
          SELECT true FROM outbox AS e
          WHERE e.key = o.key AND e.published_at IS NULL AND e.id < o.id
            AND e.locked_until > now()
          LIMIT 1
      ) IS NULL
    ORDER BY o.id
    LIMIT :batch_size
    FOR UPDATE OF o SKIP LOCKED
),
ranked AS (
    SELECT c.id, c.key, row_number() OVER (PARTITION BY c.key ORDER BY c.id) - 1 AS earlier
    FROM candidate AS c
),
eligible AS (
    SELECT r.id
    FROM ranked AS r
    WHERE (
        SELECT count(*) FROM outbox AS e
        WHERE e.key = r.key AND e.published_at IS NULL AND e.id < r.id
    ) = r.earlier
),
claimed AS (
    UPDATE outbox AS o
    SET locked_until = now() + make_interval(secs => :lease_seconds),
        locked_by = :owner,
        attempts = o.attempts + 1
    FROM eligible
    WHERE o.id = eligible.id
    RETURNING o.id, o.event_id, o.topic, o.key, o.payload::text AS payload,
              o.headers::text AS headers, o.created_at, o.attempts
)
SELECT * FROM claimed ORDER BY id
"""
)

# Settings for the relay's own transactions (claim, mark, release), local to each:
#  - no JIT: the planner prices the claim by the whole backlog and would JIT-compile it
#    (hundreds of milliseconds) to run what is in fact a short index walk;
#  - asynchronous commit: losing the last lease or mark in a database crash only means
#    those events are published again, which at-least-once delivery allows anyway; the
#    writers' inserts keep their synchronous commit. Saves a WAL flush per statement.
_RELAY_TX = text(
    "SELECT set_config('jit', 'off', true), set_config('synchronous_commit', 'off', true)"
)
# The claim also forbids bitmap and sequential scans. The outbox's statistics are nearly
# always stale (it fills and drains faster than autovacuum analyzes it). Believing "few
# unpublished rows", the planner bitmap-scans *every* unpublished row, runs the key probe
# on each and sorts them all, so a claim costs O(backlog) just when the backlog is large
# (1.5 s per claim at 100k rows, make bench). Without those scans, the plans left walk
# ix_outbox_unpublished in id order and stop at the LIMIT: O(batch), whatever the stats.
_CLAIM_TX = text(
    "SELECT set_config('jit', 'off', true), set_config('synchronous_commit', 'off', true),"
    " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
)


class PendingStats(NamedTuple):
    pending_count: int
    oldest_age_seconds: float
    """Age of the oldest unpublished row; 0.0 when there is none."""


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    # Only "the database is unreachable" is translated: the relay backs off and retries.
    # A programming error (bad SQL, a missing table) propagates and stops the process.
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        raise StoreUnavailableError(f"outbox {operation} failed: {exc.__class__.__name__}") from exc


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class OutboxStore:
    """The relay's side of the outbox table, over a sync engine (one short tx per call)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim(self, batch_size: int, owner: str, lease_seconds: float) -> list[ClaimedEvent]:
        """Lease up to `batch_size` publishable rows to `owner`, in id order."""
        if batch_size < 1 or lease_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and lease_seconds > 0")
        params = {"batch_size": batch_size, "owner": owner, "lease_seconds": lease_seconds}
        with _translated("claim"), self._engine.begin() as conn:
            conn.execute(_CLAIM_TX)
            rows = conn.execute(CLAIM_SQL, params).all()
        # Unpacked by position: this runs for every event at full drain speed.
        return [
            ClaimedEvent(
                id=id_,
                event_id=event_id,
                topic=topic,
                key=key,
                payload=payload.encode(),
                headers=json.loads(headers),
                created_at=created_at,
                attempts=attempts,
            )
            for id_, event_id, topic, key, payload, headers, created_at, attempts in rows
        ]

    def mark_published(self, ids: Sequence[int], owner: str) -> int:
        """Mark rows published if `owner` still holds them; return how many were marked.

        A relay whose lease expired and was re-claimed by another relay marks nothing: the
        new holder owns the row's fate.
        """
        if not ids:
            return 0
        t = outbox_table
        stmt = (
            update(t)
            .where(t.c.id == any_(_IDS))
            .where(t.c.locked_by == owner, t.c.published_at.is_(None))
            .values(published_at=func.now(), locked_until=None, last_error=None)
        )
        with _translated("mark_published"), self._engine.begin() as conn:
            conn.execute(_RELAY_TX)
            return conn.execute(stmt, {"ids": list(ids)}).rowcount

    def release_failed(
        self, ids: Sequence[int], owner: str, error: str, *, retry_after: float = 0.0
    ) -> int:
        """Record `error` on rows `owner` holds and free them, now or after `retry_after` s.

        A row held back keeps blocking later rows with its key, so order survives retries.
        """
        if not ids:
            return 0
        t = outbox_table
        locked_until: Any = None
        if retry_after > 0:
            locked_until = func.now() + bindparam(
                "retry_after", timedelta(seconds=retry_after), type_=Interval
            )
        stmt = (
            update(t)
            .where(t.c.id == any_(_IDS))
            .where(t.c.locked_by == owner, t.c.published_at.is_(None))
            .values(locked_until=locked_until, locked_by=None, last_error=error)
        )
        with _translated("release_failed"), self._engine.begin() as conn:
            conn.execute(_RELAY_TX)
            return conn.execute(stmt, {"ids": list(ids)}).rowcount

    def delete_published_before(
        self,
        retention: float | timedelta,
        *,
        batch_size: int = 5000,
        max_batches: int | None = None,
    ) -> int:
        """Delete rows published more than `retention` (seconds or timedelta) ago.

        Deletes in batches, one transaction each, so a large backlog never holds one long
        lock or transaction; `max_batches` bounds one call (the relay spreads a big
        cleanup over several rounds rather than stop publishing for it).
        """
        t = outbox_table
        cutoff = func.now() - bindparam(
            "retention", timedelta(seconds=_seconds(retention)), type_=Interval
        )
        victims = (
            select(t.c.id)
            .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
            .limit(batch_size)
            .scalar_subquery()
        )
        stmt = delete(t).where(t.c.id.in_(victims))
        total = batches = 0
        while True:
            with _translated("delete_published_before"), self._engine.begin() as conn:
                deleted = conn.execute(stmt).rowcount
            total += deleted
            batches += 1
            if deleted < batch_size or (max_batches is not None and batches >= max_batches):
                return total

    def pending_stats(self) -> PendingStats:
        """How many rows wait to be published, and how old the oldest one is."""
        t = outbox_table
        stmt = select(
            func.count(),
            func.coalesce(func.extract("epoch", func.now() - func.min(t.c.created_at)), 0),
        ).where(t.c.published_at.is_(None))
        with _translated("pending_stats"), self._engine.connect() as conn:
            count, age = conn.execute(stmt).one()
        return PendingStats(int(count), float(age))
