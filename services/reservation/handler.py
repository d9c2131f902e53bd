"""One order event → one warehouse call → one outcome on the order.

This is the application half of the retry engine's `Handler` protocol. The live consumer
and the retry scheduler both call it, so an order follows the same rules whether it is
handled the first time or the fifth. It never decides *whether* to retry: it performs
the side effect and raises, and the engine's classifier decides.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retry.errors import UndecodableMessage
from retry.model import DecisionKind, FailureDecision, FailureKind, Message
from retry.rows import RetryRow
from services.common.tracing import current_traceparent
from services.reservation import db
from services.reservation.domain import (
    CANCELLABLE,
    OrderCancelled,
    OrderPlaced,
    OrderStatus,
    decode_event,
)
from services.reservation.metrics import OrderOutcomeMetrics
from services.reservation.warehouse import WarehouseClient

log = logging.getLogger(__name__)

HANDLER_NAME = "reserve-stock"
OPEN = (OrderStatus.PENDING, OrderStatus.RETRY_PENDING)
# An operator may reprocess a DEAD order's parked event; its outcome then counts again.
REVIVABLE = (*OPEN, OrderStatus.DEAD)
# What the warehouse refusing an order means: these error classes are the business "no".
REJECTING_ERRORS = frozenset({"http_409", "http_422"})


@dataclass(frozen=True)
class Handled:
    event: OrderPlaced | OrderCancelled
    detail: str


class ReservationHandler:
    name = HANDLER_NAME

    def __init__(self, warehouse: WarehouseClient, outcomes: OrderOutcomeMetrics) -> None:
        self._warehouse = warehouse
        self._outcomes = outcomes

    async def handle(self, message: Message, attempt: int) -> Handled:
        event = decode_event(message.value)
        if message.key is not None and message.key != str(event.order_id):
            raise UndecodableMessage(
                f"message key {message.key!r} is not the event's order id", signal="schema"
            )
        if isinstance(event, OrderPlaced):
            items = [item.model_dump() for item in event.items]
            await self._warehouse.reserve(event.order_id, items, current_traceparent())
            return Handled(event, "stock reserved")
        released = await self._warehouse.release(event.order_id, current_traceparent())
        return Handled(event, "stock released" if released else "nothing was reserved")

    async def on_success(self, conn: AsyncConnection, message: Message, result: object) -> None:
        assert isinstance(result, Handled)
        event = result.event
        if isinstance(event, OrderPlaced):
            await self._finalize(
                conn, event.order_id, OrderStatus.RESERVED, REVIVABLE, result.detail
            )
        else:
            done = await self._finalize(
                conn, event.order_id, OrderStatus.CANCELLED, CANCELLABLE, result.detail
            )
            if not done:
                await db.note(conn, event.order_id, reason=f"cancel processed: {result.detail}")

    async def on_failure(
        self, conn: AsyncConnection, message: Message, decision: FailureDecision
    ) -> None:
        order_id = _order_id(message)
        cls = decision.classification
        if order_id is None:
            # Poison without a usable id: the retry row keeps the bytes; no order to update.
            log.warning(
                "undecodable message parked as dead",
                extra={
                    "event.action": "poison_parked",
                    "error.type": cls.error_class,
                    "error.message": cls.reason,
                },
            )
            return
        details: dict[str, Any] = {
            "error_class": cls.error_class,
            "retry_id": decision.retry_id,
            "next_attempt_at": decision.next_attempt_at.isoformat()
            if decision.next_attempt_at
            else None,
        }
        is_placed = _event_type(message) == "OrderPlaced"
        if decision.kind is DecisionKind.PARKED_BEHIND or not is_placed:
            what = (
                "waiting behind an earlier parked event"
                if (decision.kind is DecisionKind.PARKED_BEHIND)
                else f"cancel {decision.kind.value.lower()}: {cls.reason}"
            )
            await db.note(conn, order_id, reason=what, attempt=decision.attempt, details=details)
            return
        if decision.kind is DecisionKind.PARKED:
            await db.transition(
                conn,
                order_id,
                OrderStatus.RETRY_PENDING,
                allowed_from=REVIVABLE,
                reason=f"attempt {decision.attempt} failed ({cls.error_class}): {cls.reason}",
                attempt=decision.attempt,
                details=details,
            )
            return
        rejected = cls.kind is FailureKind.TERMINAL and cls.error_class in REJECTING_ERRORS
        final = OrderStatus.REJECTED if rejected else OrderStatus.DEAD
        why = (
            cls.reason
            if rejected
            else f"{cls.error_class} after {decision.attempt} attempts: {cls.reason}"
        )
        await self._finalize(conn, order_id, final, REVIVABLE, why, decision.attempt, details)

    async def _finalize(
        self,
        conn: AsyncConnection,
        order_id: UUID,
        status: OrderStatus,
        allowed_from: Any,
        reason: str,
        attempt: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> bool:
        step = await db.transition(
            conn,
            order_id,
            status,
            allowed_from=allowed_from,
            reason=reason,
            attempt=attempt,
            details=details,
        )
        if step is None:
            return False
        self._outcomes.orders_final.labels(status.value).inc()
        self._outcomes.end_to_end.labels(status.value).observe(
            (step.updated_at - step.created_at).total_seconds()
        )
        log.info(
            f"order {status.value.lower()}",
            extra={
                "event.action": f"order_{status.value.lower()}",
                "labels.order_id": str(order_id),
                "order.status": status.value,
                "reason": reason,
            },
        )
        return True


def _order_id(message: Message) -> UUID | None:
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


def order_of_cancelled_message(
    engine: AsyncEngine,
) -> Callable[[RetryRow], Awaitable[None]]:
    """When an operator cancels a parked event, its order stops waiting: it becomes DEAD
    with the reason, rather than showing RETRY_PENDING forever."""

    async def settle(row: RetryRow) -> None:
        message = row.to_message()
        order_id = _order_id(message)
        if order_id is None or _event_type(message) != "OrderPlaced":
            return
        async with engine.begin() as conn:
            await db.transition(
                conn,
                order_id,
                OrderStatus.DEAD,
                allowed_from=OPEN,
                reason=f"retry #{row.id} cancelled by an operator",
                attempt=row.attempts,
            )

    return settle
