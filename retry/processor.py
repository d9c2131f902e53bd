"""One message through the engine: the live consumer's `process` and the scheduler's `redrive`.

Framework-neutral: a consumer adapter hands over a `Message`, the scheduler a claimed
`RetryRow`. Both run the same application `Handler`, classify any failure in one place,
and write the outcome (engine bookkeeping plus the handler's own status change) in one
transaction.

Whatever the handler raises, the processor answers with an outcome and never raises it
back: a broken message must not crash-loop a consumer. Only infrastructure failures
(the database unreachable) propagate, because retrying in place is then the right thing.
If the application's `on_success`/`on_failure` raise, the message is still parked (as
"unexpected") without them, so it is never lost.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retry.dedup import already_processed, mark_processed
from retry.errors import LeaseLost
from retry.model import (
    Classification,
    DecisionKind,
    FailureDecision,
    FailureKind,
    Handler,
    Message,
)
from retry.rows import ORDERING_ERROR, RetryRow, clean_text
from retry.store import RetryStore

log = logging.getLogger(__name__)

UNEXPECTED = "unexpected"
# The database being unreachable is not the message's fault: propagate, retry in place.
_INFRA = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)
_PROPAGATE = (LeaseLost, *_INFRA)
_T = TypeVar("_T")


class Breaker(Protocol):
    async def allow(self) -> bool: ...
    async def record(self, success: bool, /) -> object: ...
    async def state(self) -> str: ...


class Policy(Protocol):
    @property
    def max_attempts(self) -> int: ...
    def next_delay(
        self, attempt: int, rng: random.Random, retry_after: float | None, /
    ) -> float | None: ...


class Policies(Protocol):
    def for_class(self, error_class: str, /) -> Policy: ...


class Classifying(Protocol):
    @property
    def unexpected_max_attempts(self) -> int: ...
    def classify(self, exc: Exception, /) -> Classification: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...


class ProcessResult(StrEnum):
    SUCCEEDED = "succeeded"
    PARKED = "parked"
    PARKED_BEHIND = "parked_behind"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    BLOCKED = "blocked"
    """The breaker refused: nothing was written; pause, wait, and offer the message again."""


class RedriveOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    RESCHEDULED = "rescheduled"
    DEAD = "dead"
    SKIPPED_BREAKER = "skipped_breaker"
    LEASE_LOST = "lease_lost"
    """Another scheduler owns the row now (our lease expired); our result was dropped."""


@dataclass(frozen=True)
class FailurePlan:
    state: str
    """PENDING (retry after `delay`) or DEAD."""
    delay: float | None
    max_attempts: int


def plan_failure(
    classification: Classification,
    *,
    attempt: int,
    round_start: int,
    max_attempts: int,
    policy: Policy,
    rng: random.Random,
    unexpected_cap: int,
) -> FailurePlan:
    """What a failure at `attempt` leads to. Pure: the whole retry decision in one place.

    `round_start` is how many attempts were made before the current round (an operator's
    requeue starts a new one), so the policy sees attempt 1 again after a requeue.
    """
    if classification.kind is not FailureKind.RETRYABLE:
        return FailurePlan("DEAD", None, max_attempts)
    in_round = max(1, attempt - round_start)
    if classification.error_class == UNEXPECTED and in_round >= unexpected_cap:
        return FailurePlan("DEAD", None, max_attempts)
    if attempt >= max_attempts:
        return FailurePlan("DEAD", None, max_attempts)
    delay = policy.next_delay(in_round, rng, classification.retry_after)
    if delay is None:
        return FailurePlan("DEAD", None, max_attempts)
    return FailurePlan("PENDING", max(0.0, delay), max_attempts)


# Processors rebuilt on one registry (a consumer's runtime restarting) share the counter.
_CONSUMED: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _consumed_counter(registry: CollectorRegistry) -> Counter:
    if registry not in _CONSUMED:
        _CONSUMED[registry] = Counter(
            "steadfast_consumed_messages",
            "Messages the live consumer processed, by outcome and error class",
            ["outcome", "error_class"],
            registry=registry,
        )
    return _CONSUMED[registry]


class Processor:
    def __init__(
        self,
        engine: AsyncEngine,
        store: RetryStore,
        handler: Handler,
        classifier: Classifying,
        policies: Policies,
        breaker: Breaker,
        *,
        clock: Clock,
        rng: random.Random,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._handler = handler
        self._classifier = classifier
        self._policies = policies
        self._breaker = breaker
        self._clock = clock
        self._rng = rng
        self._consumed = _consumed_counter(registry or CollectorRegistry())

    @property
    def handler_name(self) -> str:
        return self._handler.name

    async def breaker_state(self) -> str:
        return await self._breaker.state()

    # -- the live consumer --------------------------------------------------------------------

    async def process(self, message: Message) -> ProcessResult:
        """Handle one delivered message; the caller commits its offset unless BLOCKED."""
        message_id = clean_text(message.message_id)
        name = self._handler.name
        async with self._engine.begin() as conn:
            if await already_processed(conn, message_id) or await self._store.is_parked(
                conn, name, message_id
            ):
                self._count(ProcessResult.DUPLICATE)
                log.info("duplicate delivery ignored", extra=_fields(message, "message_duplicate"))
                return ProcessResult.DUPLICATE
            head = await self._store.has_open_for_key(
                conn, message.topic, message.key, handler=name
            )
        if head is not None:
            return await self._park(message, _behind(head, message.key), behind=head)
        if not await self._breaker.allow():
            return ProcessResult.BLOCKED
        try:
            result = await self._handle(message, 1)
        except Exception as exc:
            return await self._park(message, await self._failed(exc))
        await self._record(True)
        try:
            async with self._engine.begin() as conn:
                if not await mark_processed(conn, message_id, name, "SUCCEEDED"):
                    # A concurrent delivery (a rebalance) recorded it first: its outcome stands.
                    self._count(ProcessResult.DUPLICATE)
                    return ProcessResult.DUPLICATE
                await self._handler.on_success(conn, message, result)
        except _INFRA:
            raise
        except Exception as exc:
            log.exception("on_success raised", extra=_fields(message, "handler_bookkeeping_failed"))
            return await self._park(message, self._classify(exc))
        self._count(ProcessResult.SUCCEEDED)
        log.info("message processed", extra=_fields(message, "message_processed", attempt=1))
        return ProcessResult.SUCCEEDED

    async def _park(
        self, message: Message, cls: Classification, *, behind: int | None = None
    ) -> ProcessResult:
        """Park after a failed first attempt, or (`behind` a row id) without an attempt."""
        attempt = 1 if behind is None else 0
        policy = self._policies.for_class(cls.error_class)
        plan = (
            FailurePlan("PENDING", None, policy.max_attempts)
            if behind is not None
            else self._plan(cls, attempt=1, round_start=0, max_attempts=policy.max_attempts)
        )
        kind = (
            DecisionKind.PARKED_BEHIND
            if behind is not None
            else DecisionKind.DEAD
            if plan.state == "DEAD"
            else DecisionKind.PARKED
        )

        async def write(conn: AsyncConnection, notify: bool) -> ProcessResult:
            parked = await self._store.park(
                conn,
                message,
                handler=self._handler.name,
                classification=cls,
                attempt=attempt,
                delay_seconds=plan.delay,
                max_attempts=plan.max_attempts,
                state=plan.state,
            )
            if not parked.created:  # a concurrent delivery parked it first
                return ProcessResult.DUPLICATE
            if kind is DecisionKind.DEAD:
                message_id = clean_text(message.message_id)
                await mark_processed(conn, message_id, self._handler.name, "DEAD")
            decision = FailureDecision(
                kind=kind,
                classification=cls,
                attempt=attempt,
                retry_id=parked.id,
                next_attempt_at=None if kind is DecisionKind.DEAD else parked.next_attempt_at,
            )
            if notify:
                await self._handler.on_failure(conn, message, decision)
            return _PARK_RESULTS[kind]

        outcome = await self._write(message, write)
        self._count(outcome, cls)
        action = _ACTIONS[kind] if outcome is not ProcessResult.DUPLICATE else "message_duplicate"
        level = logging.INFO if behind is not None else logging.WARNING
        log.log(
            level, f"{outcome.value}: {cls.reason}", extra=_fields(message, action, attempt, cls)
        )
        return outcome

    # -- the scheduler -------------------------------------------------------------------------

    async def redrive(self, row: RetryRow, owner: str) -> RedriveOutcome:
        """Run a claimed row's message again and finish the row (checking `owner`'s lease)."""
        message = row.to_message()
        attempt = row.attempts + 1
        try:
            if not await self._breaker.allow():
                await self._store.release(row.id, owner, reason="breaker open")
                return RedriveOutcome.SKIPPED_BREAKER
            try:
                result = await self._handle(message, attempt)
            except Exception as exc:
                return await self._redrive_failed(row, owner, await self._failed(exc), attempt)
            await self._record(True)
            try:
                async with self._engine.begin() as conn:
                    await self._store.complete(conn, row.id, owner)
                    await mark_processed(conn, row.message_id, row.handler, "SUCCEEDED")
                    await self._handler.on_success(conn, message, result)
            except _PROPAGATE:
                raise
            except Exception as exc:
                log.exception(
                    "on_success raised", extra=_fields(message, "handler_bookkeeping_failed")
                )
                return await self._redrive_failed(row, owner, self._classify(exc), attempt)
        except LeaseLost:
            log.warning(
                "lease lost: result dropped",
                extra={**_fields(message, "redrive_lease_lost", attempt), "retry.id": row.id},
            )
            return RedriveOutcome.LEASE_LOST
        log.info(
            "message redriven",
            extra={**_fields(message, "message_redriven", attempt), "retry.id": row.id},
        )
        return RedriveOutcome.SUCCEEDED

    async def _redrive_failed(
        self, row: RetryRow, owner: str, cls: Classification, attempt: int
    ) -> RedriveOutcome:
        plan = self._plan(
            cls, attempt=attempt, round_start=row.round_start, max_attempts=row.max_attempts
        )
        dead = plan.state == "DEAD"
        message = row.to_message()

        async def write(conn: AsyncConnection, notify: bool) -> RedriveOutcome:
            if dead:
                await self._store.mark_dead(conn, row.id, owner, cls)
                await mark_processed(conn, row.message_id, row.handler, "DEAD")
                next_at = None
            else:
                updated = await self._store.reschedule(
                    conn, row.id, owner, classification=cls, delay_seconds=plan.delay or 0.0
                )
                next_at = updated.next_attempt_at
            if notify:
                kind = DecisionKind.DEAD if dead else DecisionKind.PARKED
                decision = FailureDecision(
                    kind=kind,
                    classification=cls,
                    attempt=attempt,
                    retry_id=row.id,
                    next_attempt_at=next_at,
                )
                await self._handler.on_failure(conn, message, decision)
            return RedriveOutcome.DEAD if dead else RedriveOutcome.RESCHEDULED

        outcome = await self._write(message, write)
        log.warning(
            f"re-drive failed ({outcome.value}): {cls.reason}",
            extra={
                **_fields(message, "message_dead" if dead else "message_rescheduled", attempt, cls),
                "retry.id": row.id,
            },
        )
        return outcome

    # -- helpers --------------------------------------------------------------------------------

    async def _handle(self, message: Message, attempt: int) -> object:
        started = self._clock.monotonic()
        try:
            return await self._handler.handle(message, attempt)
        finally:
            log.debug(
                "handler returned",
                extra={
                    **_fields(message, "handler_called", attempt),
                    "event.duration": int((self._clock.monotonic() - started) * 1e9),
                },
            )

    async def _failed(self, exc: Exception) -> Classification:
        """Classify a handler failure and tell the breaker what it says about the dependency."""
        cls = self._classify(exc)
        if cls.counts_against_breaker:
            await self._record(False)
        elif cls.kind is FailureKind.TERMINAL:
            # The dependency answered (e.g. 409 out of stock), so it is healthy. Poison and
            # our own bugs say nothing about it and are not recorded.
            await self._record(True)
        return cls

    async def _record(self, success: bool) -> None:
        # The outcome is already decided; a breaker hiccup must not turn it into a re-run.
        try:
            await self._breaker.record(success)
        except Exception:
            log.exception("breaker record failed", extra={"event.action": "breaker_record_failed"})

    def _classify(self, exc: Exception) -> Classification:
        try:
            return self._classifier.classify(exc)
        except Exception:
            log.exception("classifier raised", extra={"event.action": "classifier_failed"})
            return Classification(
                kind=FailureKind.RETRYABLE,
                error_class=UNEXPECTED,
                reason=f"{type(exc).__name__}: {exc}",
            )

    def _plan(
        self, cls: Classification, *, attempt: int, round_start: int, max_attempts: int
    ) -> FailurePlan:
        return plan_failure(
            cls,
            attempt=attempt,
            round_start=round_start,
            max_attempts=max_attempts,
            policy=self._policies.for_class(cls.error_class),
            rng=self._rng,
            unexpected_cap=self._classifier.unexpected_max_attempts,
        )

    async def _write(
        self, message: Message, write: Callable[[AsyncConnection, bool], Awaitable[_T]]
    ) -> _T:
        """Run `write` with the handler's `on_failure`; if that raises, again without it."""
        try:
            async with self._engine.begin() as conn:
                return await write(conn, True)
        except _PROPAGATE:
            raise
        except Exception:
            log.exception(
                "on_failure raised; parking without it",
                extra=_fields(message, "handler_bookkeeping_failed"),
            )
        async with self._engine.begin() as conn:
            return await write(conn, False)

    def _count(self, outcome: ProcessResult, cls: Classification | None = None) -> None:
        self._consumed.labels(outcome.value, cls.error_class if cls else "").inc()


_PARK_RESULTS = {
    DecisionKind.PARKED: ProcessResult.PARKED,
    DecisionKind.PARKED_BEHIND: ProcessResult.PARKED_BEHIND,
    DecisionKind.DEAD: ProcessResult.DEAD,
}
_ACTIONS = {
    DecisionKind.PARKED: "message_parked",
    DecisionKind.PARKED_BEHIND: "message_parked_behind",
    DecisionKind.DEAD: "message_dead",
}


def _behind(head: int, key: str | None) -> Classification:
    return Classification(
        kind=FailureKind.RETRYABLE,
        error_class=ORDERING_ERROR,
        reason=f"parked behind message #{head} for key {key}",
    )


def _fields(
    message: Message,
    action: str,
    attempt: int | None = None,
    cls: Classification | None = None,
) -> dict[str, Any]:
    """ECS fields for one message's log line."""
    fields: dict[str, Any] = {
        "event.action": action,
        "labels.message_id": clean_text(message.message_id),
        "labels.message_key": clean_text(message.key) if message.key is not None else None,
        "kafka.topic": message.topic,
        "kafka.partition": message.partition,
        "kafka.offset": message.offset,
    }
    if attempt is not None:
        fields["retry.attempt"] = attempt
    if cls is not None:
        fields["error.type"] = cls.error_class
        fields["error.message"] = cls.reason
    return fields
