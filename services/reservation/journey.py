"""Order status changes for a whole batch: one statement moves the orders and writes the steps.

A `Step` either moves an order to a status (only from the statuses it allows; a placement
only while no cancel was requested, so a cancel wins over a reservation recorded at the
same moment) or just adds a journey note. Every step runs in the caller's transaction.
An order's steps run in order: the first step of every order in one statement, the
second in the next (an UPDATE must not touch one row twice).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.reservation.domain import FINAL_STATUSES, OrderStatus

STEP_SQL = """
WITH s AS (
    SELECT * FROM jsonb_to_recordset(%(steps)s::jsonb)
        AS s(id uuid, to_status text, allowed text, reason text, attempt int, details jsonb,
             guard bool, note bool, seq int)
),
moved AS (
    UPDATE orders AS o
       SET status = s.to_status, status_reason = s.reason, updated_at = now(),
           attempts = COALESCE(s.attempt, o.attempts),
           finalized_at = CASE WHEN s.to_status = ANY(%(final)s::text[]) THEN now() END
      FROM s
     WHERE s.to_status IS NOT NULL AND o.id = s.id
       AND o.status = ANY(string_to_array(s.allowed, ','))
       AND (NOT s.guard OR o.cancel_requested_at IS NULL)
    RETURNING o.id, o.status, o.created_at, o.updated_at, s.seq
),
noted AS (
    INSERT INTO order_status_history (order_id, status, reason, attempt, details)
    SELECT s.id, COALESCE(m.status, o.status), s.reason, s.attempt, s.details
      FROM s
      JOIN orders AS o ON o.id = s.id
      LEFT JOIN moved AS m ON m.seq = s.seq
     WHERE m.seq IS NOT NULL OR s.to_status IS NULL OR s.note
     ORDER BY s.seq
)
SELECT seq, status, created_at, updated_at FROM moved
"""


_FINAL = [x.value for x in FINAL_STATUSES]


@functools.cache
def _allowed(statuses: frozenset[OrderStatus]) -> str:
    """The statement's form of a step's allowed statuses (a handful of distinct sets)."""
    return ",".join(sorted(x.value for x in statuses))


@dataclass(frozen=True, kw_only=True)
class Step:
    order_id: UUID
    reason: str
    to: OrderStatus | None = None
    """None: a journey note, the status stays."""
    allowed_from: frozenset[OrderStatus] = frozenset()
    attempt: int | None = None
    details: dict[str, Any] | None = None
    unless_cancelled: bool = False
    """Only if no cancel was requested (a reservation must not win over a cancel)."""
    note_if_unmoved: bool = False
    """Still record the step as a note when the order was elsewhere."""


@dataclass(frozen=True)
class Moved:
    step: Step
    status: OrderStatus
    created_at: datetime
    updated_at: datetime


async def apply(conn: AsyncConnection[Any], steps: Sequence[Step]) -> list[Moved]:
    """Apply `steps` (in order per order); returns the steps that moved an order."""
    moved: list[Moved] = []
    for round_ in _rounds(steps):
        # One JSON document rather than nine arrays: psycopg dumps array elements one by
        # one in Python, the JSON in one call.
        rows = [
            {
                "id": str(s.order_id),
                "to_status": s.to.value if s.to else None,
                "allowed": _allowed(s.allowed_from),
                "reason": s.reason,
                "attempt": s.attempt,
                "details": s.details,
                "guard": s.unless_cancelled,
                "note": s.note_if_unmoved,
                "seq": seq,
            }
            for seq, s in enumerate(round_)
        ]
        cur = await conn.execute(STEP_SQL, {"steps": Jsonb(rows), "final": _FINAL})
        for seq, status, created_at, updated_at in await cur.fetchall():
            moved.append(Moved(round_[seq], OrderStatus(status), created_at, updated_at))
    return moved


def _rounds(steps: Iterable[Step]) -> list[list[Step]]:
    rounds: list[list[Step]] = []
    seen: dict[UUID, int] = {}
    for step in steps:
        n = seen.get(step.order_id, 0)
        seen[step.order_id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(step)
    return rounds
