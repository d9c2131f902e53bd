"""The retry table: park in the caller's transaction, claim with a lease, finish, operate.

Consumers `park` a failed message inside their own transaction, so the application's
status change and the parked row commit together. Schedulers `claim_due` a batch (one
statement, SKIP LOCKED, a lease computed by the database) and finish each row with
`complete`, `reschedule`, `mark_dead` or `release`; every finishing call checks that the
caller still holds the lease and raises `LeaseLost` otherwise. Operators `list`, `get`,
`requeue` and `cancel`.

Per-key ordering: a row is claimable only while no earlier (lower id) row of its handler
with the same (source_topic, key) is open (PENDING or IN_PROGRESS), so rows parked behind
a failed message are re-driven one at a time, in order, after it finishes. Rows without a
key are unordered, as in Kafka.

`attempts` counts attempts made: a first failure parks with 1, each re-drive adds one
(whatever its outcome), and a row parked behind another starts at 0 because it was never
tried. Every change appends {at, attempt, outcome, error_class, reason, by} to `history`;
the first entry also records the `max_attempts` the row was parked with (its "round").

Requeue (operators): DEAD or PENDING rows become PENDING, due now, keep their attempts,
and get one more full round: max_attempts = attempts + round. Keeping attempts keeps the
record honest; raising the cap is what makes a requeue of an exhausted row mean anything.

The values the store reads and takes (rows, filters, pages, cursors) live in `retry.rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Text, cast, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from retry.errors import LeaseLost
from retry.model import Classification, Message
from retry.rows import (
    ORDERING_ERROR,
    InvalidQuery,
    Page,
    Parked,
    RequeueResult,
    RetryFilter,
    RetryRow,
    RetrySummary,
    clean_text,
    decode_cursor,
    encode_cursor,
    row_from,
)
from retry.schema import RETRY_STATES, retry_messages

log = logging.getLogger(__name__)

t = retry_messages
OPEN_STATES = ("PENDING", "IN_PROGRESS")
REQUEUEABLE_STATES = ("PENDING", "DEAD")
CANCELLABLE_STATES = ("PENDING", "DEAD")
MAX_PAGE = 500
_REASON_MAX = 2000

# The claim is hand-written SQL on purpose: it is the pattern this package is about.
#  - due PENDING rows, or IN_PROGRESS rows whose lease expired (a killed scheduler's batch);
#  - only the head of each key: no earlier open row with the same (handler, source_topic,
#    key) (two consumer groups on one topic are independent pipelines), and
#    no later row of that key under a live lease (an operator requeued an earlier row
#    while a later one runs): one worker per key at a time;
#  - oldest due first; SKIP LOCKED, so concurrent schedulers never wait for or share a row.
CLAIM_SQL = text(
    """
WITH due AS MATERIALIZED (
    SELECT r.id
    FROM retry_messages AS r
    WHERE ((r.state = 'PENDING' AND r.next_attempt_at <= now())
           OR (r.state = 'IN_PROGRESS' AND r.lease_expires_at <= now()))
      AND (CAST(:handler AS text) IS NULL OR r.handler = CAST(:handler AS text))
      AND NOT EXISTS (
          -- The top-level state test (implied by both branches below) lets the planner
          -- use the partial open-key index: one index probe per candidate, not a scan.
          SELECT 1 FROM retry_messages AS e
          WHERE e.source_topic = r.source_topic AND e.key = r.key AND e.id <> r.id
            AND e.state IN ('PENDING', 'IN_PROGRESS')
            AND e.handler = r.handler
            AND ((e.id < r.id AND e.state IN ('PENDING', 'IN_PROGRESS'))
                 OR (e.state = 'IN_PROGRESS' AND e.lease_expires_at > now()))
      )
    ORDER BY r.next_attempt_at, r.id
    LIMIT :batch_size
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE retry_messages AS r
SET state = 'IN_PROGRESS',
    lease_owner = :owner,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    updated_at = now()
FROM due
WHERE r.id = due.id
RETURNING r.*
"""
)


def _opt_text(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def _reason(value: str | None) -> str | None:
    return None if value is None else clean_text(value)[:_REASON_MAX]


# -- SQL fragments ------------------------------------------------------------------------


def _value(value: Any) -> ColumnElement[Any]:
    if isinstance(value, ColumnElement):
        return value
    return cast(literal(value), Integer if isinstance(value, int) else Text)


def _entry(outcome: str, *, by: str, **fields_: Any) -> ColumnElement[Any]:
    """`[{at: now(), outcome, by, ...}]`: one history entry, timed by the database."""
    values = {"outcome": outcome, "by": clean_text(by), **fields_}
    if "reason" in values:
        values["reason"] = _reason(values["reason"])
    args: list[Any] = [_value("at"), func.now()]
    for name, value in values.items():
        args += [_value(name), _value(value)]
    return func.jsonb_build_array(func.jsonb_build_object(*args, type_=JSONB), type_=JSONB)


def _append(outcome: str, *, by: str, **fields_: Any) -> ColumnElement[Any]:
    return t.c.history.op("||", return_type=JSONB)(_entry(outcome, by=by, **fields_))


def _due_in(delay_seconds: float | None) -> ColumnElement[datetime]:
    """now() + delay, on the database's clock."""
    if delay_seconds is None or delay_seconds <= 0:
        return func.now()
    secs = text("secs => :delay_seconds").bindparams(delay_seconds=float(delay_seconds))
    return func.now() + func.make_interval(secs)


# -- the store ------------------------------------------------------------------------------


class RetryStore:
    """The retry table, over an async engine. Methods taking `conn` join its transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def park(
        self,
        conn: AsyncConnection,
        message: Message,
        *,
        handler: str,
        classification: Classification,
        attempt: int,
        delay_seconds: float | None,
        max_attempts: int,
        state: str = "PENDING",
        by: str = "consumer",
    ) -> Parked:
        """Park `message` once per (handler, message_id); a redelivery gets the first row."""
        if state not in ("PENDING", "DEAD"):
            raise ValueError(f"a message is parked PENDING or DEAD, not {state}")
        message_id = clean_text(message.message_id)
        outcome = "parked" if state == "PENDING" else "dead"
        if classification.error_class == ORDERING_ERROR:
            outcome = "parked_behind"
        headers = {clean_text(str(k)): clean_text(str(v)) for k, v in message.headers.items()}
        stmt = (
            insert(t)
            .values(
                source_topic=clean_text(message.topic),
                source_partition=message.partition,
                source_offset=message.offset,
                source_timestamp=message.timestamp,
                consumer_group=_opt_text(message.consumer_group),
                message_id=message_id,
                key=_opt_text(message.key),
                payload=bytes(message.value),
                headers=headers,
                handler=handler,
                error_class=clean_text(classification.error_class),
                last_error=_reason(classification.reason),
                attempts=attempt,
                max_attempts=max_attempts,
                next_attempt_at=_due_in(delay_seconds),
                state=state,
                history=_entry(
                    outcome,
                    by=by,
                    attempt=attempt,
                    error_class=clean_text(classification.error_class),
                    reason=classification.reason,
                    max_attempts=max_attempts,
                ),
            )
            .on_conflict_do_nothing(index_elements=[t.c.handler, t.c.message_id])
            .returning(t.c.id, t.c.next_attempt_at)
        )
        row = (await conn.execute(stmt)).first()
        if row is not None:
            return Parked(row.id, True, row.next_attempt_at)
        existing = (
            await conn.execute(
                select(t.c.id, t.c.next_attempt_at).where(
                    t.c.handler == handler, t.c.message_id == message_id
                )
            )
        ).one()
        return Parked(existing.id, False, existing.next_attempt_at)

    async def has_open_for_key(
        self, conn: AsyncConnection, topic: str, key: str | None, *, handler: str | None = None
    ) -> int | None:
        """Id of the earliest open row with this key (of `handler`, if given), if any."""
        if key is None:
            return None
        stmt = (
            select(t.c.id)
            .where(t.c.source_topic == clean_text(topic), t.c.key == clean_text(key))
            .where(t.c.state.in_(OPEN_STATES))
            .order_by(t.c.id)
            .limit(1)
        )
        if handler is not None:
            stmt = stmt.where(t.c.handler == handler)
        return (await conn.execute(stmt)).scalar_one_or_none()

    async def is_parked(self, conn: AsyncConnection, handler: str, message_id: str) -> bool:
        """Whether this message already has a row, whatever state it reached."""
        stmt = select(t.c.id).where(
            t.c.handler == handler, t.c.message_id == clean_text(message_id)
        )
        return (await conn.execute(stmt)).first() is not None

    # -- the scheduler's side -------------------------------------------------------------

    async def claim_due(
        self, batch_size: int, owner: str, lease_seconds: float, *, handler: str | None = None
    ) -> list[RetryRow]:
        """Lease up to `batch_size` due rows (heads of their keys) to `owner`, oldest first.

        `handler` limits the claim to that handler's rows; a scheduler should always pass
        it when several handlers share the table.
        """
        if batch_size < 1 or lease_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and lease_seconds > 0")
        params = {
            "batch_size": batch_size,
            "owner": owner,
            "lease_seconds": float(lease_seconds),
            "handler": handler,
        }
        async with self._engine.begin() as conn:
            rows = (await conn.execute(CLAIM_SQL, params)).mappings().all()
        claimed = [row_from(RetryRow, row) for row in rows]
        return sorted(claimed, key=lambda r: (r.next_attempt_at, r.id))

    async def _finish(
        self, conn: AsyncConnection, row_id: int, owner: str, **values: Any
    ) -> RetryRow:
        stmt = (
            update(t)
            .where(t.c.id == row_id, t.c.state == "IN_PROGRESS", t.c.lease_owner == owner)
            .values(updated_at=func.now(), lease_owner=None, lease_expires_at=None, **values)
            .returning(*t.c)
        )
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise LeaseLost(f"retry row {row_id} is no longer leased to {owner}")
        return row_from(RetryRow, row)

    async def complete(self, conn: AsyncConnection, row_id: int, owner: str) -> RetryRow:
        """The re-drive succeeded: SUCCEEDED."""
        attempts = t.c.attempts + 1
        return await self._finish(
            conn,
            row_id,
            owner,
            state="SUCCEEDED",
            attempts=attempts,
            history=_append("succeeded", by=owner, attempt=attempts),
        )

    async def reschedule(
        self,
        conn: AsyncConnection,
        row_id: int,
        owner: str,
        *,
        classification: Classification,
        delay_seconds: float,
    ) -> RetryRow:
        """A retryable failure: PENDING again, attempts + 1, due after `delay_seconds`."""
        return await self._fail(conn, row_id, owner, classification, "PENDING", delay_seconds)

    async def mark_dead(
        self, conn: AsyncConnection, row_id: int, owner: str, classification: Classification
    ) -> RetryRow:
        """Terminal, poison, or out of attempts: DEAD, kept for operators."""
        return await self._fail(conn, row_id, owner, classification, "DEAD", None)

    async def _fail(
        self,
        conn: AsyncConnection,
        row_id: int,
        owner: str,
        classification: Classification,
        state: str,
        delay_seconds: float | None,
    ) -> RetryRow:
        attempts = t.c.attempts + 1
        error_class = clean_text(classification.error_class)
        return await self._finish(
            conn,
            row_id,
            owner,
            state=state,
            attempts=attempts,
            next_attempt_at=_due_in(delay_seconds),
            error_class=error_class,
            last_error=_reason(classification.reason),
            history=_append(
                "rescheduled" if state == "PENDING" else "dead",
                by=owner,
                attempt=attempts,
                error_class=error_class,
                reason=classification.reason,
            ),
        )

    async def release(self, row_id: int, owner: str, *, reason: str = "released") -> None:
        """Give a claimed row back untouched (e.g. the breaker is open): PENDING, same due time."""
        async with self._engine.begin() as conn:
            await self._finish(
                conn,
                row_id,
                owner,
                state="PENDING",
                history=_append("released", by=owner, attempt=t.c.attempts, reason=reason),
            )

    # -- operators --------------------------------------------------------------------------

    async def list(
        self, filters: RetryFilter | None = None, *, cursor: str | None = None, limit: int = 50
    ) -> Page:
        """Rows matching `filters`, newest first, keyset-paginated on id."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery(f"limit must be between 1 and {MAX_PAGE}")
        columns = [c for c in t.c if c.name not in ("payload", "headers", "history")]
        stmt = select(*columns).where(*(filters or RetryFilter()).clauses())
        if cursor is not None:
            stmt = stmt.where(t.c.id < decode_cursor(cursor))
        stmt = stmt.order_by(t.c.id.desc()).limit(limit + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        items = [row_from(RetrySummary, row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].id) if more else None)

    async def get(self, row_id: int) -> RetryRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(t).where(t.c.id == row_id))).mappings().first()
        return None if row is None else row_from(RetryRow, row)

    async def requeue(
        self,
        *,
        ids: Sequence[int] | None = None,
        filters: RetryFilter | None = None,
        dry_run: bool = False,
        limit: int = 1000,
        actor: str,
    ) -> RequeueResult:
        """Make DEAD/PENDING rows due now with one more full round of attempts.

        Selects by `ids`, or by `filters` (a filter's states are narrowed to the requeueable
        ones); at most `limit` rows, oldest first. Rows being claimed right now are skipped.
        """
        if limit < 1:
            raise InvalidQuery("limit must be >= 1")
        target = select(t.c.id).where(t.c.state.in_(REQUEUEABLE_STATES))
        if ids is not None:
            target = target.where(t.c.id.in_(list(ids)))
        target = target.where(*(filters or RetryFilter()).clauses())
        target = target.order_by(t.c.id).limit(limit)
        async with self._engine.begin() as conn:
            if dry_run:
                counted = select(func.count()).select_from(target.subquery())
                return RequeueResult(int((await conn.execute(counted)).scalar_one()), 0)
            locked = target.with_for_update(skip_locked=True).cte("target")
            round_ = func.coalesce(
                cast(t.c.history[0]["max_attempts"].astext, Integer), t.c.max_attempts
            )
            stmt = (
                update(t)
                .where(t.c.id.in_(select(locked.c.id)))
                .values(
                    state="PENDING",
                    next_attempt_at=func.now(),
                    max_attempts=t.c.attempts + round_,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=func.now(),
                    history=_append("requeued", by=actor, attempt=t.c.attempts),
                )
                .returning(t.c.id)
            )
            requeued = len((await conn.execute(stmt)).all())
        return RequeueResult(requeued, requeued)

    async def cancel(
        self,
        row_id: int,
        actor: str,
        *,
        reason: str | None = None,
        settle: Callable[[AsyncConnection, RetryRow], Awaitable[None]] | None = None,
    ) -> bool:
        """PENDING/DEAD → CANCELLED. False when the row is in another state (or missing).

        `settle` runs in the same transaction, so what the application changes for the
        cancelled message (its order) commits, or not, together with the row.
        """
        stmt = (
            update(t)
            .where(t.c.id == row_id, t.c.state.in_(CANCELLABLE_STATES))
            .values(
                state="CANCELLED",
                updated_at=func.now(),
                history=_append("cancelled", by=actor, attempt=t.c.attempts, reason=reason),
            )
            .returning(*t.c)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                return False
            if settle is not None:
                await settle(conn, row_from(RetryRow, row))
            return True

    async def counts_by_state(self) -> dict[str, int]:
        """Rows per state, every state present (0 when none)."""
        stmt = select(t.c.state, func.count()).group_by(t.c.state)
        async with self._engine.connect() as conn:
            found = {state: int(n) for state, n in (await conn.execute(stmt)).all()}
        return {state: found.get(state, 0) for state in RETRY_STATES}
