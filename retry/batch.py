"""The batch engine: one poll batch (or one claimed batch of retry rows) in, outcomes out.

Per batch, whatever its size:

1. one read for the engine (`batch_sql.lookup`: events already taken, keys with an open
   retry row) and one for the application (`BatchHandler.prepare`);
2. the side effects in waves: a wave holds the next message of every key, so a key's
   messages run in offset order while different keys run together. A wave goes out
   canary first (its first `canary` calls, then the rest), so an outage meets a few
   calls, not a whole batch. The shared breaker is asked per call, and only for items
   that reach the dependency (a poison message or a cancelled order takes no half-open
   probe permit);
3. one write transaction: the events claimed in processed_events (a per-event lock: an
   event another consumer recorded first is dropped here as a duplicate), the parked
   rows, the re-driven rows finished under their lease, and the application's own
   changes (`BatchHandler.record`).

Classification decides every failure (`retry.failure.plan_failure`), in one place. The
engine never raises what the handler raised: a broken message is parked, never
crash-looped. Only infrastructure failures (the database unreachable) propagate, so the
caller retries the whole batch in place; that is safe, because the write is one
transaction and the side effects are idempotent.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool

from retry import batch_sql
from retry.batch_model import WRITTEN, BatchHandler, Delivery, Outcome, Verdict
from retry.failure import UNEXPECTED, Classifying, Policies, plan_failure
from retry.model import Classification, FailureKind, Message
from retry.rows import ORDERING_ERROR, clean_text

log = logging.getLogger(__name__)

_INFRA = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


# Engines rebuilt on one registry (a consumer's runtime restarting) share the counter.
_CONSUMED: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _consumed_counter(registry: CollectorRegistry) -> Counter:
    if registry not in _CONSUMED:
        _CONSUMED[registry] = Counter(
            "steadfast_consumed_messages",
            "Messages the engine processed, by outcome and error class",
            ["outcome", "error_class"],
            registry=registry,
        )
    return _CONSUMED[registry]


class Breaker(Protocol):
    async def allow(self) -> bool: ...
    async def record(self, success: bool, /) -> object: ...
    async def release(self) -> object: ...


class BatchProcessor:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        handler: BatchHandler,
        classifier: Classifying,
        policies: Policies,
        breaker: Breaker,
        *,
        rng: random.Random,
        registry: CollectorRegistry,
        owner: str = "consumer",
        on_outcomes: Callable[[Sequence[Outcome]], None] | None = None,
        canary: int = 20,
    ) -> None:
        self._pool = pool
        self._handler = handler
        self._classifier = classifier
        self._policies = policies
        self._breaker = breaker
        self._rng = rng
        self._owner = owner
        self._on_outcomes = on_outcomes
        if canary < 1:
            raise ValueError("canary must be >= 1")
        self._canary = canary
        self._counted = _consumed_counter(registry)

    @property
    def handler_name(self) -> str:
        return self._handler.name

    async def process(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Process a batch; one outcome per delivery, in delivery order.

        Live deliveries must be in offset order per partition; re-drives come from one
        claim (which holds at most one row per key).
        """
        if not deliveries:
            return []
        live = [d.message for d in deliveries if not d.redrive]
        async with self._pool.connection() as conn:
            found = await batch_sql.lookup(conn, self._handler.name, live) if live else None
            usable = [d.message for d in deliveries if d.broken is None]
            made = iter(await self._prepare(conn, usable) if usable else [])
        prepared = [d.broken if d.broken is not None else next(made) for d in deliveries]
        outcomes = await self._decide(deliveries, prepared, found)
        await self._write(outcomes)
        self._count(outcomes)
        if self._on_outcomes is not None:
            self._on_outcomes(outcomes)
        return outcomes

    # -- deciding -----------------------------------------------------------------------------

    async def _prepare(
        self, conn: psycopg.AsyncConnection[Any], messages: Sequence[Message]
    ) -> Sequence[object]:
        try:
            prepared = await self._handler.prepare(conn, messages)
        except _INFRA:
            raise
        except Exception as exc:
            # A bug in prepare must not stall the partition: every message is parked.
            log.exception("prepare raised", extra={"event.action": "handler_prepare_failed"})
            return [exc] * len(messages)
        if len(prepared) != len(messages):
            error = RuntimeError(f"prepare returned {len(prepared)} items for {len(messages)}")
            return [error] * len(messages)
        return prepared

    async def _decide(
        self,
        deliveries: Sequence[Delivery],
        prepared: Sequence[object],
        found: batch_sql.Lookup | None,
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        queues: dict[tuple[str, str | None], deque[int]] = defaultdict(deque)
        for i, (delivery, item) in enumerate(zip(deliveries, prepared, strict=True)):
            message = delivery.message
            if not delivery.redrive and found is not None:
                if clean_text(message.message_id) in found.seen:
                    outcomes[i] = Outcome(delivery=delivery, verdict=Verdict.DUPLICATE)
                    continue
                head = (
                    found.heads.get((clean_text(message.topic), clean_text(message.key)))
                    if message.key is not None
                    else None
                )
                if head is not None:
                    outcomes[i] = self._behind(delivery, item, f"message #{head}")
                    continue
            if isinstance(item, Exception):
                outcomes[i] = self._failed(delivery, None, self._classify(item))
                continue
            # Keyless messages are unordered, as in Kafka: each its own queue.
            key = message.key if message.key is not None else f"\0{i}"
            queues[(message.topic, key)].append(i)

        blocked: set[tuple[str, str | None]] = set()
        parked: dict[tuple[str, str | None], int] = {}
        while queues:
            wave: list[int] = []
            for qkey in list(queues):
                index = queues[qkey].popleft()
                if not queues[qkey]:
                    del queues[qkey]
                delivery = deliveries[index]
                if qkey in blocked:
                    outcomes[index] = Outcome(
                        delivery=delivery, verdict=Verdict.BLOCKED, prepared=prepared[index]
                    )
                elif qkey in parked:
                    outcomes[index] = self._behind(
                        delivery, prepared[index], f"offset {parked[qkey]}"
                    )
                else:
                    wave.append(index)
            # A canary first: the breaker only learns from answers, so a whole wave let
            # through at once would meet an outage with every call (and park them all).
            # After the canary's answers the breaker is asked again for the rest.
            chunks = [wave[: self._canary], wave[self._canary :]]
            for chunk in chunks:
                if chunk:
                    await self._run_chunk(chunk, deliveries, prepared, outcomes, blocked, parked)
        return [o for o in outcomes if o is not None]

    async def _run_chunk(
        self,
        chunk: list[int],
        deliveries: Sequence[Delivery],
        prepared: Sequence[object],
        outcomes: list[Outcome | None],
        blocked: set[tuple[str, str | None]],
        parked: dict[tuple[str, str | None], int],
    ) -> None:
        admitted: list[int] = []
        for index in chunk:
            item = prepared[index]
            if self._handler.calls_dependency(item) and not await self._breaker.allow():
                outcomes[index] = Outcome(
                    delivery=deliveries[index], verdict=Verdict.BLOCKED, prepared=item
                )
                message = deliveries[index].message
                key = message.key if message.key is not None else f"\0{index}"
                blocked.add((message.topic, key))
            else:
                admitted.append(index)
        if not admitted:
            return
        results = await self._call(
            [prepared[i] for i in admitted], [deliveries[i].attempt for i in admitted]
        )
        for index, result in zip(admitted, results, strict=True):
            delivery = deliveries[index]
            item = prepared[index]
            touches = self._handler.calls_dependency(item)
            if isinstance(result, Exception):
                cls = self._classify(result)
                await self._report(cls, touches)
                outcome = self._failed(delivery, item, cls)
                if outcome.verdict is Verdict.PARKED:
                    message = delivery.message
                    key = message.key if message.key is not None else f"\0{index}"
                    parked[(message.topic, key)] = message.offset or 0
            else:
                if touches:
                    await self._record_breaker(True)
                outcome = Outcome(
                    delivery=delivery, verdict=Verdict.SUCCEEDED, prepared=item, result=result
                )
            outcomes[index] = outcome

    async def _call(self, items: list[object], attempts: list[int]) -> Sequence[object]:
        try:
            results = await self._handler.call(items, attempts)
        except Exception as exc:
            # The handler should answer per item; if it raises, every item failed with it
            # (classified "unexpected", so `_report` gives each one's permit back).
            log.exception("call raised", extra={"event.action": "handler_call_failed"})
            return [exc] * len(items)
        if len(results) != len(items):
            return [RuntimeError("call returned a different number of results")] * len(items)
        return results

    def _failed(self, delivery: Delivery, item: object, cls: Classification) -> Outcome:
        row = delivery.row
        policy = self._policies.for_class(cls.error_class)
        plan = plan_failure(
            cls,
            attempt=delivery.attempt,
            round_start=row.round_start if row is not None else 0,
            max_attempts=row.max_attempts if row is not None else policy.max_attempts,
            policy=policy,
            rng=self._rng,
            unexpected_cap=self._classifier.unexpected_max_attempts,
        )
        return Outcome(
            delivery=delivery,
            verdict=Verdict.DEAD if plan.state == "DEAD" else Verdict.PARKED,
            prepared=item,
            classification=cls,
            delay=plan.delay,
            max_attempts=plan.max_attempts,
        )

    def _behind(self, delivery: Delivery, item: object, head: str) -> Outcome:
        key = delivery.message.key
        cls = Classification(
            kind=FailureKind.RETRYABLE,
            error_class=ORDERING_ERROR,
            reason=f"parked behind {head} for key {key}",
        )
        policy = self._policies.for_class(ORDERING_ERROR)
        return Outcome(
            delivery=delivery,
            verdict=Verdict.PARKED_BEHIND,
            prepared=None if isinstance(item, Exception) else item,
            classification=cls,
            delay=0.0,
            max_attempts=policy.max_attempts,
        )

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

    async def _report(self, cls: Classification, touched: bool) -> None:
        """What a failure says about the dependency, told to the breaker."""
        if cls.counts_against_breaker:
            await self._record_breaker(False)
        elif cls.kind is FailureKind.TERMINAL and touched:
            # The dependency answered (409 out of stock): it is healthy.
            await self._record_breaker(True)
        elif touched:
            # Our own bug after the permit was taken, before any answer: give it back.
            await self._safely(self._breaker.release)

    async def _record_breaker(self, success: bool) -> None:
        await self._safely(self._breaker.record, success)

    @staticmethod
    async def _safely(call: Callable[..., Any], *args: Any) -> None:
        # The outcome is decided; a breaker hiccup must not turn it into a re-run.
        try:
            await call(*args)
        except Exception:
            log.exception("breaker call failed", extra={"event.action": "breaker_record_failed"})

    # -- writing ------------------------------------------------------------------------------

    async def _write(self, outcomes: list[Outcome]) -> None:
        try:
            await self._transaction(outcomes, with_handler=True)
        except _RecordFailed:
            # The application's record raised: park its successes as "unexpected" (a
            # re-drive runs record again), so nothing is lost, and write without it.
            log.exception("record raised", extra={"event.action": "handler_bookkeeping_failed"})
            for i, outcome in enumerate(outcomes):
                if outcome.verdict is Verdict.SUCCEEDED:
                    cls = Classification(
                        kind=FailureKind.RETRYABLE,
                        error_class=UNEXPECTED,
                        reason="recording the outcome failed",
                    )
                    outcomes[i] = self._failed(outcome.delivery, outcome.prepared, cls)
            await self._transaction(outcomes, with_handler=False)

    async def _transaction(self, outcomes: list[Outcome], *, with_handler: bool) -> None:
        name = self._handler.name
        live = [o for o in outcomes if not o.delivery.redrive and o.verdict in WRITTEN]
        redriven = [o for o in outcomes if o.delivery.redrive]
        async with self._pool.connection() as conn, conn.transaction():
            mine = await batch_sql.claim_events(
                conn,
                name,
                sorted({(clean_text(o.message.message_id), o.verdict.value) for o in live}),
            )
            for o in live:
                if clean_text(o.message.message_id) not in mine:
                    o.verdict = Verdict.DUPLICATE
            parked = await batch_sql.park(
                conn,
                name,
                [
                    _park_row(o)
                    for o in live
                    if o.verdict in (Verdict.PARKED, Verdict.PARKED_BEHIND, Verdict.DEAD)
                ],
                by=self._owner,
            )
            for o in live:
                hit = parked.get(clean_text(o.message.message_id))
                if hit is not None:
                    o.retry_id, o.next_attempt_at = hit
            await self._finish_redriven(conn, redriven)
            if with_handler:
                try:
                    await self._handler.record(conn, [o for o in outcomes if o.verdict in WRITTEN])
                except _INFRA:
                    raise
                except Exception as exc:
                    raise _RecordFailed from exc

    async def _finish_redriven(
        self, conn: psycopg.AsyncConnection[Any], outcomes: list[Outcome]
    ) -> None:
        finishing = [o for o in outcomes if o.verdict in WRITTEN]
        rows = []
        for o in finishing:
            assert o.delivery.row is not None
            cls = o.classification
            state, outcome = {
                Verdict.SUCCEEDED: ("SUCCEEDED", "succeeded"),
                Verdict.PARKED: ("PENDING", "rescheduled"),
                Verdict.PARKED_BEHIND: ("PENDING", "rescheduled"),
                Verdict.DEAD: ("DEAD", "dead"),
            }[o.verdict]
            rows.append(
                batch_sql.FinishRow(
                    row_id=o.delivery.row.id,
                    lease_owner=o.delivery.row.lease_owner or "",
                    state=state,
                    outcome=outcome,
                    delay=o.delay or 0.0,
                    error_class=cls.error_class if cls else None,
                    reason=cls.reason if cls else None,
                )
            )
        kept = await batch_sql.finish(conn, rows)
        for o in finishing:
            assert o.delivery.row is not None
            o.retry_id = o.delivery.row.id
            if o.retry_id in kept:
                o.next_attempt_at = kept[o.retry_id]
            else:
                o.verdict = Verdict.LEASE_LOST
        blocked = [
            (o.row.id, o.row.lease_owner or "")
            for o in outcomes
            if o.verdict is Verdict.BLOCKED and o.row is not None
        ]
        await batch_sql.release(conn, blocked, reason="breaker open")

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            cls = o.classification
            self._counted.labels(o.verdict.value, cls.error_class if cls else "").inc()
            action = _LOGGED.get((o.verdict, o.delivery.redrive))
            if action is not None:
                _log_outcome(action, o)


# The failure path, one line per message (the healthy path logs nothing here: the
# application logs its own journey): what an operator searches for in Kibana.
_LOGGED = {
    (Verdict.PARKED, False): "message_parked",
    (Verdict.PARKED_BEHIND, False): "message_parked_behind",
    (Verdict.DEAD, False): "message_dead",
    (Verdict.PARKED, True): "message_rescheduled",
    (Verdict.PARKED_BEHIND, True): "message_rescheduled",
    (Verdict.DEAD, True): "message_dead",
    (Verdict.SUCCEEDED, True): "message_redriven",
}


def _log_outcome(action: str, o: Outcome) -> None:
    cls = o.classification
    message = o.message
    log.log(
        logging.WARNING if o.verdict is Verdict.DEAD else logging.INFO,
        action.replace("_", " "),
        extra={
            "event.action": action,
            "labels.message_id": clean_text(message.message_id),
            "labels.message_key": None if message.key is None else clean_text(message.key),
            "kafka.topic": message.topic,
            "kafka.partition": message.partition,
            "kafka.offset": message.offset,
            "retry.id": o.retry_id,
            "retry.attempt": o.attempt,
            "retry.next_attempt_at": o.next_attempt_at.isoformat()
            if o.next_attempt_at is not None and o.verdict is not Verdict.DEAD
            else None,
            "error.type": cls.error_class if cls else None,
            "error.message": cls.reason[:500] if cls else None,
        },
    )


class _RecordFailed(Exception):
    """The application's `record` raised (not the engine's own statements)."""


def _park_row(o: Outcome) -> batch_sql.ParkRow:
    cls = o.classification
    assert cls is not None
    behind = o.verdict is Verdict.PARKED_BEHIND
    dead = o.verdict is Verdict.DEAD
    return batch_sql.ParkRow(
        message=o.message,
        error_class=cls.error_class,
        reason=cls.reason,
        attempt=0 if behind else o.attempt,
        max_attempts=o.max_attempts,
        delay=o.delay or 0.0,
        state="DEAD" if dead else "PENDING",
        outcome="parked_behind" if behind else ("dead" if dead else "parked"),
    )


async def sweep_processed(
    pool: AsyncConnectionPool[Any],
    retention_seconds: float,
    *,
    chunk: int = 5000,
    max_chunks: int = 20,
) -> int:
    """Forget processed-event records older than the retention, a chunk at a time (short
    transactions, no long lock); returns how many went."""
    total = 0
    for _ in range(max_chunks):
        async with pool.connection() as conn:
            gone = await batch_sql.expire_processed(conn, retention_seconds, chunk)
        total += gone
        if gone < chunk:
            break
    if total:
        log.info(
            "processed events expired",
            extra={"event.action": "processed_events_expired", "retry.expired": total},
        )
    return total
