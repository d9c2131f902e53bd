"""The re-drive pass and its APScheduler wiring on real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retry.classify import Classifier
from retry.clock import FakeClock
from retry.errors import CallFailed
from retry.model import Classification, FailureDecision, FailureKind, Message
from retry.policy import FixedPolicy, PolicyTable
from retry.processor import Processor
from retry.ratelimit import TokenBucket
from retry.scheduler import Redriver, build_scheduler
from retry.store import RetryStore

pytestmark = pytest.mark.postgres

TIMEOUT = Classification(kind=FailureKind.RETRYABLE, error_class="timeout", reason="slow")


class Handler:
    name = "h"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.pause = 0.0  # real seconds each call takes
        self.running: Counter[str | None] = Counter()  # calls in progress, by key
        self.peak = 0  # most calls in progress at once
        self.order: list[str] = []

    async def handle(self, message: Message, attempt: int) -> object:
        self.calls[message.message_id] += 1
        self.order.append(message.message_id)
        self.running[message.key] += 1
        self.peak = max(self.peak, self.running.total())
        assert self.running[message.key] == 1, f"two calls at once for key {message.key}"
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.running[message.key] -= 1
        if message.message_id in self.failing:
            raise CallFailed("timeout", "still slow")
        return None

    async def on_success(self, conn: AsyncConnection, message: Message, result: object) -> None:
        pass

    async def on_failure(
        self, conn: AsyncConnection, message: Message, decision: FailureDecision
    ) -> None:
        pass


@dataclass
class Breaker:
    """Allows `budget` calls, then refuses (None = unlimited)."""

    budget: int | None = None
    current: str = "CLOSED"

    async def allow(self) -> bool:
        if self.budget is None:
            return True
        self.budget -= 1
        return self.budget >= 0

    async def record(self, success: bool) -> None:
        pass

    async def state(self) -> str:
        return self.current


@dataclass
class Limiter:
    """Counts tokens; each one costs `cost` seconds of the fake clock."""

    clock: FakeClock
    cost: float = 0.0
    taken: int = field(default=0)

    async def acquire(self) -> None:
        self.taken += 1
        self.clock.advance(self.cost)


@dataclass
class Rig:
    engine: AsyncEngine
    store: RetryStore
    handler: Handler
    breaker: Breaker
    processor: Processor
    clock: FakeClock
    registry: CollectorRegistry

    def redriver(self, limiter: Limiter | None = None, **kwargs: object) -> Redriver:
        options: dict[str, object] = {"batch_size": 50, "lease_seconds": 30, "owner": "sched"}
        options.update(kwargs)
        return Redriver(
            self.store,
            self.processor,
            limiter or Limiter(self.clock),
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    async def park(self, n: int, *, key: str | None = None) -> int:
        message = Message(
            topic="orders", value=b"{}", key=key or f"k{n}", headers={"event_id": f"e{n}"}
        )
        async with self.engine.begin() as conn:
            parked = await self.store.park(
                conn,
                message,
                handler="h",
                classification=TIMEOUT,
                attempt=1,
                delay_seconds=None,
                max_attempts=5,
            )
        return parked.id

    async def states(self) -> dict[str, int]:
        return {s: n for s, n in (await self.store.counts_by_state()).items() if n}


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    store = RetryStore(engine)
    handler = Handler()
    breaker = Breaker()
    clock = FakeClock()
    processor = Processor(
        engine,
        store,
        handler,
        Classifier(),
        PolicyTable(default=FixedPolicy(delay=60, jitter=0, max_attempts=5)),
        breaker,
        clock=clock,
        rng=random.Random(1),
    )
    yield Rig(engine, store, handler, breaker, processor, clock, CollectorRegistry())
    await engine.dispose()


async def test_run_once_redrives_due_rows(rig: Rig) -> None:
    for n in range(5):
        await rig.park(n)
    rig.handler.failing.add("e4")
    limiter = Limiter(rig.clock)
    redriver = rig.redriver(limiter, registry=rig.registry)
    assert await redriver.run_once() == {"succeeded": 4, "rescheduled": 1}
    assert limiter.taken == 5
    assert await rig.states() == {"SUCCEEDED": 4, "PENDING": 1}
    assert await redriver.run_once() == {}  # the rescheduled row is due in 60 s
    sample = rig.registry.get_sample_value
    assert sample("steadfast_redrive_total", {"outcome": "succeeded"}) == 4
    assert sample("steadfast_redrive_total", {"outcome": "dead"}) == 0
    rebuilt = rig.redriver(registry=rig.registry)  # same registry: collectors are shared
    await rebuilt.refresh_metrics()
    assert sample("steadfast_retry_rows", {"state": "SUCCEEDED"}) == 4
    assert sample("steadfast_retry_rows", {"state": "DEAD"}) == 0


async def test_breaker_opening_mid_batch_gives_the_rest_back(rig: Rig) -> None:
    for n in range(5):
        await rig.park(n)
    rig.breaker.budget = 2
    result = await rig.redriver().run_once()
    assert result == {"succeeded": 2, "skipped_breaker": 3}
    assert sum(rig.handler.calls.values()) == 2
    async with rig.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT attempts, lease_owner FROM retry_messages WHERE state = 'PENDING'")
            )
        ).all()
    assert [(r.attempts, r.lease_owner) for r in rows] == [(1, None)] * 3


async def test_open_breaker_claims_nothing(rig: Rig) -> None:
    await rig.park(1)
    rig.breaker.current = "OPEN"
    assert await rig.redriver().run_once() == {}
    assert await rig.states() == {"PENDING": 1}
    async with rig.engine.connect() as conn:
        history = (await conn.execute(text("SELECT history FROM retry_messages"))).scalar_one()
    assert len(history) == 1  # not even claimed and released


async def test_slow_tokens_end_the_batch_before_the_lease_runs_out(rig: Rig) -> None:
    for n in range(6):
        await rig.park(n)
    limiter = Limiter(rig.clock, cost=6.0)  # 30 s lease: half of it is gone after 3 tokens
    result = await rig.redriver(limiter, lease_seconds=30).run_once()
    assert result == {"succeeded": 3}
    assert await rig.states() == {"SUCCEEDED": 3, "PENDING": 3}


async def test_rows_of_a_killed_scheduler_are_redriven(rig: Rig) -> None:
    for n in range(3):
        await rig.park(n)
    await rig.store.claim_due(10, "killed", 30)
    redriver = rig.redriver()
    assert await redriver.run_once() == {}
    async with rig.engine.begin() as conn:
        await conn.execute(text("UPDATE retry_messages SET lease_expires_at = now()"))
    assert await redriver.run_once() == {"succeeded": 3}


async def test_concurrent_redrivers_handle_each_row_once(rig: Rig) -> None:
    for n in range(200):
        await rig.park(n)
    a, b = rig.redriver(batch_size=7), rig.redriver(batch_size=7)
    assert a.owner != b.owner  # same instance name, distinct lease owners

    async def drain(redriver: Redriver) -> int:
        done = 0
        while result := await redriver.run_once():
            done += sum(result.values())
        return done

    done = await asyncio.gather(drain(a), drain(b))
    assert sum(done) == 200 and all(done)
    assert set(rig.handler.calls.values()) == {1} and len(rig.handler.calls) == 200


async def test_a_pass_drains_full_batches_at_the_configured_concurrency(rig: Rig) -> None:
    for n in range(25):
        await rig.park(n)
    rig.handler.pause = 0.05
    redriver = rig.redriver(batch_size=10, concurrency=4)
    assert await redriver.run_once() == {"succeeded": 25}  # three batches in one pass
    assert rig.handler.peak == 4


async def test_rows_of_one_key_are_never_redriven_together_nor_out_of_order(rig: Rig) -> None:
    for n in range(6):
        await rig.park(n, key="same")
    for n in range(6, 12):
        await rig.park(n)
    rig.handler.pause = 0.02
    redriver = rig.redriver(batch_size=50, concurrency=8)
    total: Counter[str] = Counter()
    for _ in range(10):  # one row of the key per claim: a pass takes only the first
        total.update(await redriver.run_once())
        if total["succeeded"] == 12:
            break
    assert total == {"succeeded": 12}
    same = [m for m in rig.handler.order if m in {f"e{n}" for n in range(6)}]
    assert same == [f"e{n}" for n in range(6)]


def test_build_scheduler_jobs() -> None:
    redriver = object.__new__(Redriver)  # the jobs are only registered, never run here
    scheduler = build_scheduler(redriver, interval_seconds=2.5)  # type: ignore[arg-type]
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"redrive", "retry_metrics"}
    job = jobs["redrive"]
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 2.5
    assert (job.max_instances, job.coalesce) == (1, True)

    async def evaluate() -> None:
        pass

    cron = build_scheduler(redriver, interval_seconds=1, cron="*/5 * * * *", alerts=evaluate)  # type: ignore[arg-type]
    jobs = {job.id: job for job in cron.get_jobs()}
    assert set(jobs) == {"redrive", "retry_metrics", "alerts"}
    assert isinstance(jobs["redrive"].trigger, CronTrigger)
    with pytest.raises(ValueError):
        build_scheduler(redriver)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_scheduler(redriver, cron="not a cron")  # type: ignore[arg-type]


async def test_started_scheduler_drains_the_table(rig: Rig) -> None:
    for n in range(10):
        await rig.park(n)
    redriver = rig.redriver(registry=rig.registry)
    scheduler = build_scheduler(redriver, interval_seconds=0.1, metrics_interval_seconds=0.1)
    scheduler.start()
    try:
        for _ in range(100):
            if (await rig.states()).get("SUCCEEDED") == 10:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # one more metrics refresh
    finally:
        scheduler.shutdown(wait=False)
    assert await rig.states() == {"SUCCEEDED": 10}
    value = rig.registry.get_sample_value("steadfast_retry_rows", {"state": "SUCCEEDED"})
    assert value == 10


async def test_with_the_token_bucket(rig: Rig) -> None:
    for n in range(6):
        await rig.park(n)
    # One token every 6 s of the fake clock, the first one free. Half of the 30 s lease is
    # spent after the fourth row, so the last two go back for the next pass.
    bucket = TokenBucket(1 / 6, 1, rig.clock, registry=rig.registry)
    redriver = Redriver(
        rig.store,
        rig.processor,
        bucket,
        batch_size=10,
        lease_seconds=30,
        owner="sched",
        registry=rig.registry,
        clock=rig.clock,
    )
    assert await redriver.run_once() == {"succeeded": 4}
    assert rig.clock.sleeps == [6.0, 6.0, 6.0]
    assert rig.registry.get_sample_value("steadfast_redrive_rate_limited_total") == 3
    assert await rig.states() == {"SUCCEEDED": 4, "PENDING": 2}
