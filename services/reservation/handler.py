"""Order events → warehouse calls → order outcomes, a whole batch at a time.

The application half of the retry engine's `BatchHandler`; the live consumer and the
retry scheduler both run it, so an order follows the same rules whether it is handled the
first time or the fifth. It never decides *whether* to retry: it performs the side
effects, answers per event with a result or the failure, and the engine classifies.

- `prepare` decodes every event (a bad one is poison) and reads the batch's orders in one
  query. An OrderPlaced whose customer already asked to cancel, or whose order is already
  final, makes no warehouse call: a cancel wins on every path (redelivery, re-drive, an
  operator's reprocess), and a reserved order is not reserved again.
- `call` reserves every placement in one batch request (one line each) and releases the
  cancelled orders.
- `record` turns the outcomes into status changes and journey steps in one statement
  (`journey.apply`); a placement is recorded as RESERVED only while no cancel is
  requested, and a cancel then releases what was reserved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from opentelemetry.trace import SpanKind
from psycopg import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection as SAConnection

from retry.batch_model import Outcome, Verdict
from retry.errors import UndecodableMessage
from retry.model import FailureKind, Message
from retry.rows import RetryRow
from services.common import tracing
from services.reservation import journey
from services.reservation.domain import (
    OrderCancelled,
    OrderPlaced,
    OrderStatus,
    decode_event,
)
from services.reservation.journey import Step
from services.reservation.metrics import OrderOutcomeMetrics
from services.reservation.warehouse import ReserveLine, WarehouseClient

log = logging.getLogger(__name__)

HANDLER_NAME = "reserve-stock"
OPEN = frozenset({OrderStatus.PENDING, OrderStatus.RETRY_PENDING})
# An operator may reprocess a DEAD order's parked event; its outcome then counts again.
REVIVABLE = OPEN | {OrderStatus.DEAD}
# A cancel ends every order that is not already over: it releases what is reserved.
CANCEL_WINS_OVER = REVIVABLE | {OrderStatus.RESERVED}
# What the warehouse refusing an order means: these error classes are the business "no".
REJECTING_ERRORS = frozenset({"http_409", "http_422"})

_STATE_SQL = "SELECT id, status, cancel_requested_at FROM orders WHERE id = ANY(%(ids)s::uuid[])"


@dataclass(frozen=True, slots=True)
class OrderState:
    status: OrderStatus
    cancel_requested_at: datetime | None


@dataclass(frozen=True, slots=True)
class Prepared:
    event: OrderPlaced | OrderCancelled
    order: OrderState | None
    skip: str | None = None
    """Why no warehouse call is made (a cancel requested, an order already final)."""
    traceparent: str | None = None
    """The trace the order's placement started (the event's header)."""

    @property
    def order_id(self) -> UUID:
        return self.event.order_id


@dataclass(frozen=True, slots=True)
class Handled:
    detail: str


class ReservationHandler:
    name = HANDLER_NAME

    def __init__(self, warehouse: WarehouseClient, outcomes: OrderOutcomeMetrics) -> None:
        self._warehouse = warehouse
        self._outcomes = outcomes

    # -- the engine's protocol ----------------------------------------------------------------

    async def prepare(
        self, conn: AsyncConnection[Any], messages: Sequence[Message]
    ) -> list[object]:
        decoded = [_decode(m) for m in messages]
        ids = list({e.order_id for e in decoded if not isinstance(e, Exception)})
        orders: dict[UUID, OrderState] = {}
        if ids:
            cur = await conn.execute(_STATE_SQL, {"ids": ids})
            for order_id, status, cancel_requested_at in await cur.fetchall():
                orders[order_id] = OrderState(OrderStatus(status), cancel_requested_at)
        out: list[object] = []
        for message, event in zip(messages, decoded, strict=True):
            if isinstance(event, Exception):
                out.append(event)
                continue
            assert isinstance(event, OrderPlaced | OrderCancelled)
            order = orders.get(event.order_id)
            traceparent = message.headers.get("traceparent")
            out.append(Prepared(event, order, _skip(event, order), traceparent))
        return out

    def calls_dependency(self, prepared: object) -> bool:
        return isinstance(prepared, Prepared) and prepared.skip is None

    async def call(self, prepared: Sequence[object], attempts: Sequence[int]) -> list[object]:
        results: list[object] = [None] * len(prepared)
        placements: list[int] = []
        releases: list[int] = []
        for i, item in enumerate(prepared):
            assert isinstance(item, Prepared)
            if item.skip is not None:
                results[i] = Handled(item.skip)
            elif isinstance(item.event, OrderPlaced):
                placements.append(i)
            else:
                releases.append(i)
        if placements:
            lines = []
            for i in placements:
                item = prepared[i]
                assert isinstance(item, Prepared) and isinstance(item.event, OrderPlaced)
                lines.append(ReserveLine(item.order_id, [x.model_dump() for x in item.event.items]))
            started = time.time()
            answers = await self._warehouse.reserve_many(lines)
            for i, answer in zip(placements, answers, strict=True):
                results[i] = answer if isinstance(answer, Exception) else Handled("stock reserved")
            if tracing.exporting():
                _call_spans("warehouse reserve", prepared, attempts, placements, results, started)
        if releases:
            started = time.time()
            done = await asyncio.gather(
                *(self._release(prepared[i]) for i in releases), return_exceptions=True
            )
            for i, released in zip(releases, done, strict=True):
                results[i] = released
            if tracing.exporting():
                _call_spans("warehouse release", prepared, attempts, releases, results, started)
        return results

    async def record(self, conn: AsyncConnection[Any], outcomes: Sequence[Outcome]) -> None:
        steps: list[Step] = []
        for outcome in outcomes:
            steps.extend(self._steps(outcome))
        moved = await journey.apply(conn, steps)
        if not any(change.status.is_final for change in moved):
            return
        # The trace each order's placement started, so its final line joins that trace.
        traces = {
            o.prepared.order_id: tracing.trace_id_of(o.prepared.traceparent)
            for o in outcomes
            if isinstance(o.prepared, Prepared)
        }
        for change in moved:
            if change.status.is_final:
                self._final(change, traces.get(change.step.order_id))

    # -- details ------------------------------------------------------------------------------

    async def _release(self, item: object) -> Handled:
        assert isinstance(item, Prepared)
        released = await self._warehouse.release(item.order_id, item.traceparent)
        return Handled("stock released" if released else "nothing was reserved")

    def _steps(self, outcome: Outcome) -> list[Step]:
        item = outcome.prepared
        if not isinstance(item, Prepared):
            order_id = _order_id_of(outcome.message)
            if order_id is None:
                if outcome.verdict is not Verdict.SUCCEEDED:
                    cls = outcome.classification
                    log.warning(
                        "undecodable message parked as dead",
                        extra={
                            "event.action": "poison_parked",
                            "error.type": cls.error_class if cls else None,
                            "error.message": cls.reason if cls else None,
                        },
                    )
                return []
            return [self._failure_step(outcome, order_id, placed=False)]
        if outcome.verdict is Verdict.SUCCEEDED:
            detail = outcome.result.detail if isinstance(outcome.result, Handled) else "done"
            if isinstance(item.event, OrderCancelled):
                return [
                    Step(
                        order_id=item.order_id,
                        to=OrderStatus.CANCELLED,
                        allowed_from=CANCEL_WINS_OVER,
                        reason=f"cancelled by the customer: {detail}",
                        note_if_unmoved=True,
                    )
                ]
            if item.skip is not None and item.order and item.order.cancel_requested_at:
                return [
                    Step(
                        order_id=item.order_id,
                        to=OrderStatus.CANCELLED,
                        allowed_from=REVIVABLE,
                        reason="cancelled by the customer before its stock was reserved",
                        attempt=outcome.attempt,
                        note_if_unmoved=True,
                    )
                ]
            if item.skip is not None:
                return [Step(order_id=item.order_id, reason=f"placement ignored: {item.skip}")]
            return [
                Step(
                    order_id=item.order_id,
                    to=OrderStatus.RESERVED,
                    allowed_from=REVIVABLE,
                    reason=detail,
                    attempt=outcome.attempt,
                    unless_cancelled=True,
                    note_if_unmoved=True,
                )
            ]
        return [
            self._failure_step(outcome, item.order_id, placed=isinstance(item.event, OrderPlaced))
        ]

    def _failure_step(self, outcome: Outcome, order_id: UUID, *, placed: bool) -> Step:
        cls = outcome.classification
        assert cls is not None
        details: dict[str, Any] = {
            "error_class": cls.error_class,
            "retry_id": outcome.retry_id,
            "next_attempt_at": outcome.next_attempt_at.isoformat()
            if outcome.next_attempt_at and outcome.verdict is not Verdict.DEAD
            else None,
        }
        attempt = outcome.attempt
        if outcome.verdict is Verdict.PARKED_BEHIND:
            return Step(
                order_id=order_id,
                reason="waiting behind an earlier parked event",
                attempt=0,
                details=details,
            )
        if not placed:
            return Step(
                order_id=order_id,
                reason=f"cancel {outcome.verdict.value}: {cls.reason}",
                attempt=attempt,
                details=details,
            )
        if outcome.verdict is Verdict.PARKED:
            return Step(
                order_id=order_id,
                to=OrderStatus.RETRY_PENDING,
                allowed_from=REVIVABLE,
                reason=f"attempt {attempt} failed ({cls.error_class}): {cls.reason}",
                attempt=attempt,
                details=details,
            )
        rejected = cls.kind is FailureKind.TERMINAL and cls.error_class in REJECTING_ERRORS
        return Step(
            order_id=order_id,
            to=OrderStatus.REJECTED if rejected else OrderStatus.DEAD,
            allowed_from=REVIVABLE,
            reason=cls.reason
            if rejected
            else f"{cls.error_class} after {attempt} attempts: {cls.reason}",
            attempt=attempt,
            details=details,
        )

    def _final(self, change: journey.Moved, trace_id: str | None) -> None:
        status = change.status
        self._outcomes.orders_final.labels(status.value).inc()
        self._outcomes.end_to_end.labels(status.value).observe(
            (change.updated_at - change.created_at).total_seconds()
        )
        log.info(
            f"order {status.value.lower()}",
            extra={
                "event.action": f"order_{status.value.lower()}",
                "labels.order_id": str(change.step.order_id),
                "order.status": status.value,
                "reason": change.step.reason,
                "trace.id": trace_id,
            },
        )


def _call_spans(
    name: str,
    prepared: Sequence[object],
    attempts: Sequence[int],
    indexes: Sequence[int],
    results: Sequence[object],
    started: float,
) -> None:
    """One client span per order of a batch call, in the trace its placement started: the
    call is shared, the spans are not, so each order's trace shows its own attempts."""
    ended = time.time()
    for i in indexes:
        item = prepared[i]
        assert isinstance(item, Prepared)
        result = results[i]
        tracing.record_span(
            name,
            parent=item.traceparent,
            start=started,
            end=ended,
            kind=SpanKind.CLIENT,
            attributes={
                "steadfast.order_id": str(item.order_id),
                "steadfast.attempt": attempts[i],
                "steadfast.batch_size": len(indexes),
            },
            error=str(result) if isinstance(result, Exception) else None,
        )


def _decode(message: Message) -> OrderPlaced | OrderCancelled | Exception:
    try:
        event = decode_event(message.value)
    except UndecodableMessage as exc:
        return exc
    if message.key is not None and message.key != str(event.order_id):
        return UndecodableMessage(
            f"message key {message.key!r} is not the event's order id", signal="schema"
        )
    return event


def _skip(event: OrderPlaced | OrderCancelled, order: OrderState | None) -> str | None:
    if not isinstance(event, OrderPlaced) or order is None:
        return None
    if order.cancel_requested_at is not None:
        return "the customer asked to cancel"
    if order.status.is_final and order.status is not OrderStatus.DEAD:
        return f"the order is already {order.status.value}"
    return None


def _order_id_of(message: Message) -> UUID | None:
    try:
        return decode_event(message.value).order_id
    except UndecodableMessage:
        pass
    try:
        return UUID(message.key) if message.key else None
    except ValueError:
        return None


def _event_type(message: Message) -> str | None:
    try:
        return decode_event(message.value).event_type
    except UndecodableMessage:
        return message.headers.get("event_type")


async def settle_cancelled_row(conn: SAConnection, row: RetryRow) -> None:
    """When an operator cancels a parked event, its order stops waiting: DEAD, with the
    reason, in the cancel's own transaction (the row and the order change together)."""
    message = row.to_message()
    order_id = _order_id_of(message)
    if order_id is None or _event_type(message) != "OrderPlaced":
        return
    # The same psycopg connection, inside the transaction SQLAlchemy began on it.
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    await journey.apply(
        raw,
        [
            Step(
                order_id=order_id,
                to=OrderStatus.DEAD,
                allowed_from=OPEN,
                reason=f"retry #{row.id} cancelled by an operator",
                attempt=row.attempts,
            )
        ],
    )
