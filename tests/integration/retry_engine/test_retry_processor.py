"""The processor on real PostgreSQL: every live path and every re-drive path.

The handler here is a tiny application: it writes its outcome into its own table inside
the engine's transaction, so the tests can see that both commit (or roll back) together.
Classifier, policies and clock are the engine's own; the breaker is a stand-in that
records what the processor asked (one test runs the real shared breaker).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retry.breaker import CircuitBreaker
from retry.breaker_machine import BreakerConfig
from retry.classify import Classifier
from retry.clock import FakeClock, SystemClock
from retry.errors import CallFailed, UndecodableMessage
from retry.model import DecisionKind, FailureDecision, FailureKind, Message
from retry.policy import ExponentialPolicy, PolicyTable
from retry.processor import Processor, ProcessResult, RedriveOutcome
from retry.schema import processed_events, retry_messages
from retry.store import RetryStore

pytestmark = pytest.mark.postgres

# delay(n) = 10, 20, 40 s; four attempts in all.
POLICY = ExponentialPolicy(base_delay=10, factor=2, max_delay=600, jitter=0, max_attempts=4)


# -- a breaker stand-in that shows exactly what the processor asked and reported ------


@dataclass
class StubBreaker:
    allowed: bool = True
    records: list[bool] = field(default_factory=list)

    async def allow(self) -> bool:
        return self.allowed

    async def record(self, success: bool) -> None:
        self.records.append(success)

    async def state(self) -> str:
        return "CLOSED" if self.allowed else "OPEN"


# -- the application --------------------------------------------------------------------


class AppHandler:
    """Fails with whatever `failures[message_id]` holds next, else succeeds."""

    name = "test-handler"

    def __init__(self) -> None:
        self.failures: dict[str, list[Exception]] = {}
        self.calls: list[tuple[str, int]] = []
        self.decisions: list[FailureDecision] = []
        self.fail_bookkeeping = False

    async def handle(self, message: Message, attempt: int) -> object:
        self.calls.append((message.message_id, attempt))
        queue = self.failures.get(message.message_id)
        if queue:
            raise queue.pop(0)
        return f"ok:{message.message_id}"

    async def on_success(self, conn: AsyncConnection, message: Message, result: object) -> None:
        await self._note(conn, message, f"success {result}")

    async def on_failure(
        self, conn: AsyncConnection, message: Message, decision: FailureDecision
    ) -> None:
        await self._note(conn, message, f"{decision.kind.value} attempt {decision.attempt}")
        if self.fail_bookkeeping:
            raise RuntimeError("application bug in on_failure")
        self.decisions.append(decision)

    async def _note(self, conn: AsyncConnection, message: Message, what: str) -> None:
        await conn.execute(
            text("INSERT INTO app_outcomes (message_id, what) VALUES (:m, :w)"),
            {"m": message.message_id, "w": what},
        )


@dataclass
class Rig:
    engine: AsyncEngine
    store: RetryStore
    handler: AppHandler
    breaker: StubBreaker
    processor: Processor
    registry: CollectorRegistry

    async def rows(self) -> list[dict[str, object]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(retry_messages).order_by(retry_messages.c.id))
            return [dict(r) for r in result.mappings()]

    async def processed(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(processed_events))
            return {r.event_id: r.outcome for r in result}

    async def app_outcomes(self) -> list[tuple[str, str]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT message_id, what FROM app_outcomes ORDER BY id")
            )
            return [(r.message_id, r.what) for r in result]

    async def make_due(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE retry_messages SET next_attempt_at = now() WHERE state = 'PENDING'")
            )

    async def redrive_all(self, owner: str = "s1") -> list[RedriveOutcome]:
        await self.make_due()
        return [
            await self.processor.redrive(row, owner)
            for row in await self.store.claim_due(50, owner, 30)
        ]

    def consumed(self, outcome: str, error_class: str = "") -> float:
        value = self.registry.get_sample_value(
            "steadfast_consumed_messages_total", {"outcome": outcome, "error_class": error_class}
        )
        return value or 0.0


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE app_outcomes (id bigserial PRIMARY KEY, message_id text, what text)")
        )
    store = RetryStore(engine)
    handler = AppHandler()
    breaker = StubBreaker()
    registry = CollectorRegistry()
    processor = Processor(
        engine,
        store,
        handler,
        Classifier(unexpected_max_attempts=3),
        PolicyTable(default=POLICY),
        breaker,
        clock=SystemClock(),
        rng=random.Random(7),
        registry=registry,
    )
    yield Rig(engine, store, handler, breaker, processor, registry)
    await engine.dispose()


def msg(n: int, *, key: str | None = None, value: bytes = b'{"ok": true}') -> Message:
    return Message(
        topic="orders",
        value=value,
        key=key if key is not None else f"key-{n}",
        partition=0,
        offset=n,
        headers={"event_id": f"e-{n}"},
    )


# -- the live consumer ------------------------------------------------------------------


async def test_success_records_outcome_in_one_transaction(rig: Rig) -> None:
    assert await rig.processor.process(msg(1)) is ProcessResult.SUCCEEDED
    assert await rig.processed() == {"e-1": "SUCCEEDED"}
    assert await rig.app_outcomes() == [("e-1", "success ok:e-1")]
    assert await rig.rows() == []
    assert rig.breaker.records == [True]
    assert rig.consumed("succeeded") == 1


async def test_redelivery_is_a_no_op(rig: Rig) -> None:
    await rig.processor.process(msg(1))
    assert await rig.processor.process(msg(1)) is ProcessResult.DUPLICATE
    rig.handler.failures["e-2"] = [CallFailed("timeout", "slow")]
    await rig.processor.process(msg(2))
    assert await rig.processor.process(msg(2)) is ProcessResult.DUPLICATE
    assert rig.handler.calls == [("e-1", 1), ("e-2", 1)]
    assert rig.consumed("duplicate") == 2


async def test_poison_is_dead_with_raw_bytes(rig: Rig) -> None:
    raw = b"\x00\xffnot-json"
    rig.handler.failures["e-1"] = [UndecodableMessage("not JSON")]
    assert await rig.processor.process(msg(1, value=raw)) is ProcessResult.DEAD
    [row] = await rig.rows()
    assert row["state"] == "DEAD" and row["payload"] == raw and row["error_class"] == "decode"
    assert await rig.processed() == {"e-1": "DEAD"}
    [decision] = rig.handler.decisions
    assert decision.kind is DecisionKind.DEAD and decision.retry_id == row["id"]
    assert decision.classification.kind is FailureKind.POISON
    assert rig.breaker.records == []  # poison says nothing about the dependency
    assert rig.consumed("dead", "decode") == 1


async def test_terminal_is_dead_without_retry(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("http_409", "out of stock")]
    assert await rig.processor.process(msg(1)) is ProcessResult.DEAD
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["error_class"]) == ("DEAD", 1, "http_409")
    assert await rig.redrive_all() == []
    assert rig.handler.decisions[0].kind is DecisionKind.DEAD
    assert rig.breaker.records == [True]  # the warehouse answered: it is healthy


async def test_retryable_is_parked_with_first_delay(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("http_503", "unavailable")]
    before = datetime.now(UTC)
    assert await rig.processor.process(msg(1)) is ProcessResult.PARKED
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("PENDING", 1, 4)
    due = row["next_attempt_at"]
    assert isinstance(due, datetime)
    assert before + timedelta(seconds=9) < due < datetime.now(UTC) + timedelta(seconds=11)
    [decision] = rig.handler.decisions
    assert decision.kind is DecisionKind.PARKED and decision.attempt == 1
    assert decision.next_attempt_at == due and decision.retry_id == row["id"]
    assert await rig.processed() == {}  # not final yet
    assert await rig.app_outcomes() == [("e-1", "PARKED attempt 1")]
    assert rig.breaker.records == [False]
    assert rig.consumed("parked", "http_503") == 1


async def test_retry_after_is_honoured(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("http_429", "slow down", retry_after=120)]
    await rig.processor.process(msg(1))
    [row] = await rig.rows()
    due, created = row["next_attempt_at"], row["created_at"]
    assert isinstance(due, datetime) and isinstance(created, datetime)
    assert 119 < (due - created).total_seconds() < 121


async def test_breaker_blocked_writes_nothing(rig: Rig) -> None:
    rig.breaker.allowed = False
    assert await rig.processor.process(msg(1)) is ProcessResult.BLOCKED
    assert rig.handler.calls == []
    assert await rig.rows() == [] and await rig.processed() == {}
    assert await rig.app_outcomes() == []


async def test_handler_crash_is_parked_not_raised(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [ZeroDivisionError("bug")]
    assert await rig.processor.process(msg(1)) is ProcessResult.PARKED
    [row] = await rig.rows()
    assert row["error_class"] == "unexpected" and row["max_attempts"] == 4
    assert rig.breaker.records == []


async def test_garbage_key_and_headers_survive(rig: Rig) -> None:
    garbage = Message(
        topic="orders",
        value=b"\xff",
        key="\x00\udcff",
        partition=1,
        offset=5,
        headers={"event_id": "\x00bad\udcfe"},
    )
    rig.handler.failures[garbage.message_id] = [CallFailed("timeout", "slow")]
    assert await rig.processor.process(garbage) is ProcessResult.PARKED
    assert await rig.processor.process(garbage) is ProcessResult.DUPLICATE
    [outcome] = await rig.redrive_all()
    assert outcome is RedriveOutcome.SUCCEEDED
    assert await rig.processed() == {"\\x00bad\\udcfe": "SUCCEEDED"}


async def test_failing_on_failure_still_parks(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow")]
    rig.handler.fail_bookkeeping = True
    assert await rig.processor.process(msg(1)) is ProcessResult.PARKED
    [row] = await rig.rows()
    assert row["state"] == "PENDING"
    assert await rig.app_outcomes() == []  # the application's half rolled back, alone


async def test_per_key_ordering_parks_behind_and_redrives_in_order(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow")]
    results = [await rig.processor.process(msg(n, key="order-A")) for n in (1, 2, 3)]
    assert results == [
        ProcessResult.PARKED,
        ProcessResult.PARKED_BEHIND,
        ProcessResult.PARKED_BEHIND,
    ]
    assert await rig.processor.process(msg(4, key="order-B")) is ProcessResult.SUCCEEDED
    assert rig.handler.calls == [("e-1", 1), ("e-4", 1)]
    rows = await rig.rows()
    assert [(r["message_id"], r["attempts"], r["error_class"]) for r in rows] == [
        ("e-1", 1, "timeout"),
        ("e-2", 0, "ordering"),
        ("e-3", 0, "ordering"),
    ]
    assert rows[1]["last_error"] == f"parked behind message #{rows[0]['id']} for key order-A"
    behind = rig.handler.decisions[1]
    assert behind.kind is DecisionKind.PARKED_BEHIND and behind.attempt == 0
    assert rig.consumed("parked_behind", "ordering") == 2
    # One head per key per claim: three re-drive rounds, in the order the messages came.
    for expected in ("e-1", "e-2", "e-3"):
        assert await rig.redrive_all() == [RedriveOutcome.SUCCEEDED]
        assert rig.handler.calls[-1] == (expected, 2 if expected == "e-1" else 1)
    assert await rig.processed() == {f"e-{n}": "SUCCEEDED" for n in (1, 2, 3, 4)}


# -- the scheduler ----------------------------------------------------------------------


async def test_redrive_success(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.processor.process(msg(1))
    assert await rig.redrive_all() == [RedriveOutcome.SUCCEEDED]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("SUCCEEDED", 2, None)
    assert await rig.processed() == {"e-1": "SUCCEEDED"}
    assert (await rig.app_outcomes())[-1] == ("e-1", "success ok:e-1")


async def test_retryable_exhaustion_is_dead(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(10)]
    await rig.processor.process(msg(1))
    outcomes = [o for _ in range(4) for o in await rig.redrive_all()]
    assert outcomes == [RedriveOutcome.RESCHEDULED, RedriveOutcome.RESCHEDULED, RedriveOutcome.DEAD]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"]) == ("DEAD", 4)
    assert [a for _, a in rig.handler.calls] == [1, 2, 3, 4]
    assert [d.kind for d in rig.handler.decisions][-1] is DecisionKind.DEAD
    assert await rig.processed() == {"e-1": "DEAD"}


async def test_rescheduled_delay_grows_with_attempts(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(2)]
    await rig.processor.process(msg(1))
    await rig.redrive_all()
    [row] = await rig.rows()
    due, updated = row["next_attempt_at"], row["updated_at"]
    assert isinstance(due, datetime) and isinstance(updated, datetime)
    assert 19 < (due - updated).total_seconds() < 21  # delay(2)


async def test_unexpected_exception_has_a_low_cap(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [RuntimeError("bug") for _ in range(10)]
    assert await rig.processor.process(msg(1)) is ProcessResult.PARKED
    outcomes = [o for _ in range(4) for o in await rig.redrive_all()]
    assert outcomes == [RedriveOutcome.RESCHEDULED, RedriveOutcome.DEAD]  # cap 3 < policy 4
    assert len(rig.handler.calls) == 3


async def test_redrive_terminal_is_dead(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow"), CallFailed("http_422", "bad")]
    await rig.processor.process(msg(1))
    assert await rig.redrive_all() == [RedriveOutcome.DEAD]
    [row] = await rig.rows()
    assert (row["state"], row["error_class"], row["last_error"]) == ("DEAD", "http_422", "bad")


async def test_redrive_with_breaker_open_releases_the_row(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.processor.process(msg(1))
    rig.breaker.allowed = False
    assert await rig.redrive_all() == [RedriveOutcome.SKIPPED_BREAKER]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("PENDING", 1, None)
    assert len(rig.handler.calls) == 1


async def test_redrive_after_lease_lost_drops_the_result(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.processor.process(msg(1))
    await rig.make_due()
    [row] = await rig.store.claim_due(1, "slow", 30)
    async with rig.engine.begin() as conn:
        await conn.execute(text("UPDATE retry_messages SET lease_expires_at = now()"))
    [stolen] = await rig.store.claim_due(1, "fast", 30)
    assert await rig.processor.redrive(row, "slow") is RedriveOutcome.LEASE_LOST
    assert await rig.processed() == {}
    assert await rig.processor.redrive(stolen, "fast") is RedriveOutcome.SUCCEEDED


async def test_requeued_exhausted_row_gets_a_full_round(rig: Rig) -> None:
    rig.handler.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(5)]
    await rig.processor.process(msg(1))
    while (await rig.rows())[0]["state"] != "DEAD":
        await rig.redrive_all()
    result = await rig.store.requeue(ids=[(await rig.rows())[0]["id"]], actor="op")
    assert result.requeued == 1
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("PENDING", 4, 8)
    assert await rig.redrive_all() == [RedriveOutcome.RESCHEDULED]  # attempt 5 fails
    [row] = await rig.rows()
    due, updated = row["next_attempt_at"], row["updated_at"]
    assert isinstance(due, datetime) and isinstance(updated, datetime)
    assert 9 < (due - updated).total_seconds() < 11  # the policy's delay(1) again
    assert await rig.redrive_all() == [RedriveOutcome.SUCCEEDED]


async def test_with_the_shared_breaker(rig: Rig) -> None:
    breaker = CircuitBreaker(
        rig.engine,
        BreakerConfig(min_calls=3, window_seconds=10, open_seconds=30),
        name="warehouse",
        clock=FakeClock(),
    )
    processor = Processor(
        rig.engine,
        rig.store,
        rig.handler,
        Classifier(),
        PolicyTable(default=POLICY),
        breaker,
        clock=SystemClock(),
        rng=random.Random(1),
    )
    for n in range(3):
        rig.handler.failures[f"e-{n}"] = [CallFailed("http_503", "down")]
        assert await processor.process(msg(n)) is ProcessResult.PARKED
    assert await breaker.state() == "OPEN"
    assert await processor.process(msg(9)) is ProcessResult.BLOCKED
    assert len(await rig.rows()) == 3 and ("e-9", 1) not in rig.handler.calls
    await rig.make_due()
    rows = await rig.store.claim_due(10, "s1", 30)
    outcomes = [await processor.redrive(row, "s1") for row in rows]
    assert outcomes == [RedriveOutcome.SKIPPED_BREAKER] * 3
    assert {r["state"] for r in await rig.rows()} == {"PENDING"}
    await breaker.force("CLOSED", "test")
    assert await processor.process(msg(9)) is ProcessResult.SUCCEEDED


async def test_a_rebuilt_processor_shares_the_registry(rig: Rig) -> None:
    again = Processor(
        rig.engine,
        rig.store,
        rig.handler,
        Classifier(),
        PolicyTable(default=POLICY),
        rig.breaker,
        clock=SystemClock(),
        rng=random.Random(2),
        registry=rig.registry,  # a consumer runtime restarting in the same process
    )
    assert await again.process(msg(1)) is ProcessResult.SUCCEEDED
    assert rig.consumed("succeeded") == 1
