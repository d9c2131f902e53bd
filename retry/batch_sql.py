"""The batch engine's SQL: one statement per step for a whole batch, on psycopg 3.

Written by hand on purpose: these statements are the pattern (the dedup claim, the park,
the leased finish), and each must be one round trip for any batch size, with arrays in
(`= ANY`, `unnest`) rather than a statement per message. Times come from the database.

- `lookup`: which events this handler already took (processed_events), and which keys
  have an open retry row (the ordering barrier), in one query.
- `claim_events`: record the batch's events as taken, in event-id order; an event another
  transaction recorded first is not returned (it waits for that transaction, so this is
  also the per-key lock that keeps two consumers from applying one event twice).
- `park`: insert retry rows; `finish`: complete, reschedule or kill leased rows, checking
  the lease; `release`: give leased rows back untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from retry.model import Message
from retry.rows import clean_text

OPEN_STATES = ("PENDING", "IN_PROGRESS")
_REASON_MAX = 2000

LOOKUP_SQL = """
SELECT 'seen' AS kind, event_id AS message_id, NULL::bigint AS retry_id,
       NULL::text AS topic, NULL::text AS key
  FROM processed_events
 WHERE handler = %(handler)s AND event_id = ANY(%(ids)s::text[])
UNION ALL
SELECT 'head', NULL, min(r.id), r.source_topic, r.key
  FROM retry_messages AS r
  JOIN unnest(%(topics)s::text[], %(keys)s::text[]) AS k(topic, key)
    ON r.source_topic = k.topic AND r.key = k.key
 WHERE r.state IN ('PENDING', 'IN_PROGRESS') AND r.handler = %(handler)s
 GROUP BY r.source_topic, r.key
"""

CLAIM_SQL = """
INSERT INTO processed_events (handler, event_id, outcome)
SELECT %(handler)s, u.event_id, u.outcome
  FROM unnest(%(ids)s::text[], %(outcomes)s::text[]) AS u(event_id, outcome)
 ORDER BY u.event_id
ON CONFLICT DO NOTHING
RETURNING event_id
"""

PARK_SQL = """
INSERT INTO retry_messages (
    source_topic, source_partition, source_offset, source_timestamp, consumer_group,
    message_id, key, payload, headers, handler, error_class, last_error, attempts,
    max_attempts, next_attempt_at, state, history)
SELECT u.topic, u.part, u.off, u.ts, u.grp, u.mid, u.key, u.payload, u.headers,
       %(handler)s, u.ec, u.err, u.att, u.maxa,
       now() + make_interval(secs => u.delay), u.state,
       jsonb_build_array(jsonb_build_object(
           'at', now(), 'outcome', u.outcome, 'by', %(by)s::text, 'attempt', u.att,
           'error_class', u.ec, 'reason', u.err, 'max_attempts', u.maxa))
  FROM unnest(%(topic)s::text[], %(part)s::int[], %(off)s::bigint[],
              %(ts)s::timestamptz[], %(grp)s::text[], %(mid)s::text[], %(key)s::text[],
              %(payload)s::bytea[], %(headers)s::jsonb[], %(ec)s::text[], %(err)s::text[],
              %(att)s::int[], %(maxa)s::int[], %(delay)s::float8[], %(state)s::text[],
              %(outcome)s::text[])
       AS u(topic, part, off, ts, grp, mid, key, payload, headers, ec, err, att, maxa,
            delay, state, outcome)
ON CONFLICT (handler, message_id) DO NOTHING
RETURNING id, message_id, next_attempt_at
"""

FINISH_SQL = """
UPDATE retry_messages AS r
   SET state = u.state,
       attempts = r.attempts + 1,
       next_attempt_at = CASE WHEN u.state = 'PENDING'
                              THEN now() + make_interval(secs => u.delay)
                              ELSE r.next_attempt_at END,
       error_class = COALESCE(u.ec, r.error_class),
       last_error = COALESCE(u.err, r.last_error),
       lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
       history = r.history || jsonb_build_array(jsonb_build_object(
           'at', now(), 'outcome', u.outcome, 'by', u.lease, 'attempt', r.attempts + 1,
           'error_class', u.ec, 'reason', u.err))
  FROM unnest(%(id)s::bigint[], %(state)s::text[], %(delay)s::float8[], %(ec)s::text[],
              %(err)s::text[], %(outcome)s::text[], %(lease)s::text[])
       AS u(id, state, delay, ec, err, outcome, lease)
 WHERE r.id = u.id AND r.state = 'IN_PROGRESS' AND r.lease_owner = u.lease
RETURNING r.id, r.next_attempt_at
"""

RELEASE_SQL = """
UPDATE retry_messages AS r
   SET state = 'PENDING', lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
       history = r.history || jsonb_build_array(jsonb_build_object(
           'at', now(), 'outcome', 'released', 'by', u.lease, 'attempt', r.attempts,
           'reason', %(reason)s::text))
  FROM unnest(%(id)s::bigint[], %(lease)s::text[]) AS u(id, lease)
 WHERE r.id = u.id AND r.state = 'IN_PROGRESS' AND r.lease_owner = u.lease
"""

RETENTION_SQL = """
DELETE FROM processed_events
 WHERE ctid = ANY(ARRAY(
       SELECT ctid FROM processed_events
        WHERE processed_at < now() - make_interval(secs => %(seconds)s)
        LIMIT %(limit)s))
"""


@dataclass(frozen=True)
class Lookup:
    seen: frozenset[str]
    """Event ids this handler already took."""
    heads: dict[tuple[str, str], int]
    """(topic, key) → id of the earliest open retry row of that key."""


async def lookup(conn: AsyncConnection[Any], handler: str, messages: Sequence[Message]) -> Lookup:
    keyed = {(clean_text(m.topic), clean_text(m.key)) for m in messages if m.key is not None}
    cur = await conn.execute(
        LOOKUP_SQL,
        {
            "handler": handler,
            "ids": [clean_text(m.message_id) for m in messages],
            "topics": [topic for topic, _ in keyed],
            "keys": [key for _, key in keyed],
        },
    )
    seen: set[str] = set()
    heads: dict[tuple[str, str], int] = {}
    for kind, message_id, retry_id, topic, key in await cur.fetchall():
        if kind == "seen":
            seen.add(message_id)
        else:
            heads[(topic, key)] = int(retry_id)
    return Lookup(frozenset(seen), heads)


async def claim_events(
    conn: AsyncConnection[Any], handler: str, claims: Sequence[tuple[str, str]]
) -> set[str]:
    """Record (event_id, outcome) pairs; returns the event ids this call recorded."""
    if not claims:
        return set()
    cur = await conn.execute(
        CLAIM_SQL,
        {"handler": handler, "ids": [c[0] for c in claims], "outcomes": [c[1] for c in claims]},
    )
    return {row[0] for row in await cur.fetchall()}


@dataclass(frozen=True, kw_only=True)
class ParkRow:
    message: Message
    error_class: str
    reason: str
    attempt: int
    max_attempts: int
    delay: float
    state: str
    """PENDING or DEAD."""
    outcome: str
    """The history entry: parked, parked_behind or dead."""


async def park(
    conn: AsyncConnection[Any], handler: str, rows: Sequence[ParkRow], *, by: str
) -> dict[str, tuple[int, datetime]]:
    """Insert retry rows; returns message id → (row id, next attempt) for those inserted."""
    if not rows:
        return {}
    m = [r.message for r in rows]
    params = {
        "handler": handler,
        "by": clean_text(by),
        "topic": [clean_text(x.topic) for x in m],
        "part": [x.partition for x in m],
        "off": [x.offset for x in m],
        "ts": [x.timestamp for x in m],
        "grp": [None if x.consumer_group is None else clean_text(x.consumer_group) for x in m],
        "mid": [clean_text(x.message_id) for x in m],
        "key": [None if x.key is None else clean_text(x.key) for x in m],
        "payload": [bytes(x.value) for x in m],
        "headers": [
            Jsonb({clean_text(str(k)): clean_text(str(v)) for k, v in x.headers.items()}) for x in m
        ],
        "ec": [clean_text(r.error_class) for r in rows],
        "err": [_reason(r.reason) for r in rows],
        "att": [r.attempt for r in rows],
        "maxa": [r.max_attempts for r in rows],
        "delay": [max(0.0, r.delay) for r in rows],
        "state": [r.state for r in rows],
        "outcome": [r.outcome for r in rows],
    }
    cur = await conn.execute(PARK_SQL, params)
    return {mid: (int(rid), at) for rid, mid, at in await cur.fetchall()}


@dataclass(frozen=True, kw_only=True)
class FinishRow:
    row_id: int
    state: str
    """SUCCEEDED, PENDING (rescheduled) or DEAD."""
    outcome: str
    """The history entry: succeeded, rescheduled or dead."""
    lease_owner: str
    """The lease the row was claimed under: the finish applies only while it holds."""
    delay: float = 0.0
    error_class: str | None = None
    reason: str | None = None


async def finish(conn: AsyncConnection[Any], rows: Sequence[FinishRow]) -> dict[int, datetime]:
    """Finish leased rows; returns row id → next attempt for those whose lease still held."""
    if not rows:
        return {}
    cur = await conn.execute(
        FINISH_SQL,
        {
            "lease": [r.lease_owner for r in rows],
            "id": [r.row_id for r in rows],
            "state": [r.state for r in rows],
            "delay": [max(0.0, r.delay) for r in rows],
            "ec": [None if r.error_class is None else clean_text(r.error_class) for r in rows],
            "err": [None if r.reason is None else _reason(r.reason) for r in rows],
            "outcome": [r.outcome for r in rows],
        },
    )
    return {int(rid): at for rid, at in await cur.fetchall()}


async def release(
    conn: AsyncConnection[Any], leased: Sequence[tuple[int, str]], *, reason: str
) -> None:
    """Give (row id, lease owner) rows back untouched, where the lease still holds."""
    if leased:
        await conn.execute(
            RELEASE_SQL,
            {
                "id": [row_id for row_id, _ in leased],
                "lease": [owner for _, owner in leased],
                "reason": clean_text(reason),
            },
        )


async def expire_processed(conn: AsyncConnection[Any], seconds: float, limit: int) -> int:
    """Delete up to `limit` processed-event records older than `seconds`; returns how many."""
    cur = await conn.execute(RETENTION_SQL, {"seconds": float(seconds), "limit": limit})
    return cur.rowcount


def _reason(value: str) -> str:
    return clean_text(value)[:_REASON_MAX]
