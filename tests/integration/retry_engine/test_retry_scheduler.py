"""The re-drive pass, the cluster-wide budget and the APScheduler wiring on real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text

from retry.clock import FakeClock
from retry.errors import CallFailed
from retry.scheduler import Redriver, build_scheduler
from retry.shared_limit import SharedTokenBucket
from tests.integration.retry_engine.engine_support import Rig

pytestmark = pytest.mark.postgres


@dataclass
class Budget:
    """Grants what is asked; each token costs `cost` seconds of the fake clock."""

    clock: FakeClock
    cost: float = 0.0
    taken: int = 0
    returned: int = 0
    asks: list[int] = field(default_factory=list)

    async def acquire(self, want: int, *, max_wait: float) -> int:
        self.asks.append(want)
        self.taken += want
        self.clock.advance(self.cost * want)
        return want

    async def give_back(self, tokens: int) -> None:
        self.returned += tokens


def redriver(rig: Rig, budget: object | None = None, **kwargs: object) -> Redriver:
    options: dict[str, object] = {"batch_size": 50, "lease_seconds": 30, "owner": "sched"}
    options.update(kwargs)
    clock = getattr(budget, "clock", None) or FakeClock()
    made = Redriver(
        rig.store,
        rig.processor,
        budget or Budget(clock),  # type: ignore[arg-type]
        rig.breaker.state,
        clock=clock,
        registry=rig.registry,
        **options,  # type: ignore[arg-type]
    )
    rig.processor._owner = made.owner
    return made


async def states(rig: Rig) -> dict[str, int]:
    return {s: n for s, n in (await rig.store.counts_by_state()).items() if n}


async def test_run_once_redrives_due_rows(rig: Rig) -> None:
    for n in range(5):
        await rig.park(n)
    rig.app.failures["e-4"] = [CallFailed("timeout", "still slow")]
    budget = Budget(FakeClock())
    pass_ = redriver(rig, budget)
    assert await pass_.run_once() == {"succeeded": 4, "rescheduled": 1}
    assert (budget.taken, budget.returned) == (50, 45)  # 5 used; the rest went back
    assert await states(rig) == {"SUCCEEDED": 4, "PENDING": 1}
    assert await pass_.run_once() == {}  # the rescheduled row is due in 10 s
    sample = rig.registry.get_sample_value
    assert sample("steadfast_redrive_total", {"outcome": "succeeded"}) == 4
    assert sample("steadfast_redrive_total", {"outcome": "dead"}) == 0
    await redriver(rig).refresh_metrics()  # same registry: collectors are shared
    assert sample("steadfast_retry_rows", {"state": "SUCCEEDED"}) == 4


async def test_breaker_refusing_mid_batch_gives_the_rest_back(rig: Rig) -> None:
    for n in range(5):
        await rig.park(n)
    rig.breaker.budget = 2
    budget = Budget(FakeClock())
    assert await redriver(rig, budget).run_once() == {"succeeded": 2, "skipped_breaker": 3}
    assert len(rig.app.calls) == 2
    assert budget.returned == 45 + 3  # unclaimed, then refused
    async with rig.engine.connect() as conn:
        query = text("SELECT attempts, lease_owner FROM retry_messages WHERE state = 'PENDING'")
        rows = (await conn.execute(query)).all()
    assert [(r.attempts, r.lease_owner) for r in rows] == [(1, None)] * 3


async def test_open_breaker_claims_nothing(rig: Rig) -> None:
    await rig.park(1)
    rig.breaker.current = "OPEN"
    assert await redriver(rig).run_once() == {}
    assert await states(rig) == {"PENDING": 1}
    async with rig.engine.connect() as conn:
        history = (await conn.execute(text("SELECT history FROM retry_messages"))).scalar_one()
    assert len(history) == 1  # not even claimed and released


async def test_a_pass_ends_inside_its_lease(rig: Rig) -> None:
    for n in range(6):
        await rig.park(n)
    budget = Budget(FakeClock(), cost=6.0)  # 30 s lease: half of it is gone after 3 tokens
    assert await redriver(rig, budget, batch_size=1).run_once() == {"succeeded": 3}
    assert await states(rig) == {"SUCCEEDED": 3, "PENDING": 3}


async def test_rows_of_a_killed_scheduler_are_redriven(rig: Rig) -> None:
    for n in range(3):
        await rig.park(n)
    await rig.store.claim_due(10, "killed", 30)
    pass_ = redriver(rig)
    assert await pass_.run_once() == {}
    async with rig.engine.begin() as conn:
        await conn.execute(text("UPDATE retry_messages SET lease_expires_at = now()"))
    assert await pass_.run_once() == {"succeeded": 3}


async def test_concurrent_redrivers_handle_each_row_once(rig: Rig) -> None:
    for n in range(200):
        await rig.park(n)
    a = Redriver(
        rig.store,
        rig.engine_for(rig.app, owner="x"),
        Budget(FakeClock()),
        rig.breaker.state,
        batch_size=7,
        owner="sched",
    )
    b = Redriver(
        rig.store,
        rig.engine_for(rig.app, owner="y"),
        Budget(FakeClock()),
        rig.breaker.state,
        batch_size=7,
        owner="sched",
    )
    assert a.owner != b.owner  # same instance name, distinct lease owners
    a._engine._owner, b._engine._owner = a.owner, b.owner  # type: ignore[attr-defined]

    async def drain(pass_: Redriver) -> int:
        done = 0
        while result := await pass_.run_once():
            done += sum(result.values())
        return done

    done = await asyncio.gather(drain(a), drain(b))
    assert sum(done) == 200 and all(done)
    assert Counter(Counter(m for m, _ in rig.app.calls).values()) == {1: 200}


async def test_rows_of_one_key_are_redriven_one_at_a_time_in_order(rig: Rig) -> None:
    for n in range(6):
        await rig.park(n, key="same")
    for n in range(6, 12):
        await rig.park(n)
    pass_ = redriver(rig)
    total: Counter[str] = Counter()
    for _ in range(10):  # one row of the key per claim
        total.update(await pass_.run_once())
        if total["succeeded"] == 12:
            break
    assert total == {"succeeded": 12}
    same = [m for m, _ in rig.app.calls if m in {f"e-{n}" for n in range(6)}]
    assert same == [f"e-{n}" for n in range(6)]


async def test_the_bucket_is_shared_by_every_instance(rig: Rig) -> None:
    """Two schedulers draw from one row: together they get the rate, not twice it."""
    a = SharedTokenBucket(rig.pool, "redrive:h", rate_per_second=2, burst=50)
    b = SharedTokenBucket(rig.pool, "redrive:h", rate_per_second=2, burst=50)
    assert (await a.take(30)).tokens == 30
    assert (await b.take(30)).tokens == 20  # what a left, plus at most a token of refill
    grant = await a.take(30)
    assert grant.tokens == 0 and 0 < grant.wait_seconds <= 0.5
    await b.give_back(7)
    assert (await a.take(30)).tokens == 7
    other = SharedTokenBucket(rig.pool, "redrive:other", rate_per_second=2, burst=5)
    assert (await other.take(30)).tokens == 5  # a bucket per name


async def test_a_waiting_instance_takes_a_worthwhile_share(rig: Rig) -> None:
    bucket = SharedTokenBucket(rig.pool, "redrive:h", rate_per_second=200, burst=40)
    assert (await bucket.take(40)).tokens == 40
    # Empty: it waits for a quarter of a batch (10 tokens, 50 ms) rather than one token.
    assert (await bucket.take(40, least=10)).tokens == 0
    got = await bucket.acquire(40, max_wait=1.0)
    assert 10 <= got <= 40


def test_build_scheduler_jobs() -> None:
    pass_ = object.__new__(Redriver)  # the jobs are only registered, never run here
    scheduler = build_scheduler(pass_, interval_seconds=2.5)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"redrive", "retry_metrics"}
    job = jobs["redrive"]
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 2.5
    assert (job.max_instances, job.coalesce) == (1, True)

    async def sweep() -> None:
        pass

    cron = build_scheduler(pass_, interval_seconds=1, cron="*/5 * * * *", housekeeping=sweep)
    jobs = {job.id: job for job in cron.get_jobs()}
    assert set(jobs) == {"redrive", "retry_metrics", "housekeeping"}
    assert isinstance(jobs["redrive"].trigger, CronTrigger)
    with pytest.raises(ValueError):
        build_scheduler(pass_)
    with pytest.raises(ValueError):
        build_scheduler(pass_, cron="not a cron")


async def test_started_scheduler_drains_the_table(rig: Rig) -> None:
    for n in range(10):
        await rig.park(n)
    pass_ = redriver(rig)
    scheduler = build_scheduler(pass_, interval_seconds=0.1, metrics_interval_seconds=0.1)
    scheduler.start()
    try:
        for _ in range(100):
            if (await states(rig)).get("SUCCEEDED") == 10:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # one more metrics refresh
    finally:
        scheduler.shutdown(wait=False)
    assert await states(rig) == {"SUCCEEDED": 10}
    value = rig.registry.get_sample_value("steadfast_retry_rows", {"state": "SUCCEEDED"})
    assert value == 10
