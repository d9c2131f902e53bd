"""The circuit breaker shared through PostgreSQL: two instances on one row agree.

Both instances share one FakeClock, so "within one sync interval" and "after open_seconds"
are exact. Each instance has its own engine, as two processes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry.breaker import CircuitBreaker, Transition
from retry.breaker_machine import BreakerConfig
from retry.clock import FakeClock
from retry.schema import circuit_breakers

pytestmark = pytest.mark.postgres

CONFIG = BreakerConfig(
    window_seconds=10,
    min_calls=4,
    failure_rate_threshold=0.5,
    open_seconds=5,
    half_open_permits=3,
    sync_interval_seconds=1.0,
)
NAME = "warehouse"


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[Callable[[], AsyncEngine]]:
    made: list[AsyncEngine] = []

    def make() -> AsyncEngine:
        engine = create_async_engine(
            make_url(database_url).set(drivername="postgresql+psycopg"), pool_size=5
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair(
    engines: Callable[[], AsyncEngine], clock: FakeClock
) -> tuple[CircuitBreaker, CircuitBreaker]:
    def make(instance: str) -> CircuitBreaker:
        return CircuitBreaker(
            engines(),
            CONFIG,
            name=NAME,
            clock=clock,
            registry=CollectorRegistry(),
            instance_id=instance,
        )

    return make("a"), make("b")


async def _open(a: CircuitBreaker) -> None:
    assert await a.allow()
    for _ in range(CONFIG.min_calls):
        await a.record(False)
    assert await a.state() == "OPEN"


async def _half_open(a: CircuitBreaker, clock: FakeClock) -> None:
    await _open(a)
    clock.advance(CONFIG.open_seconds)


async def test_failures_on_one_instance_open_the_breaker_for_both(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    assert await b.allow()  # b has synced: CLOSED
    assert await a.allow()
    for _ in range(CONFIG.min_calls - 1):
        await a.record(False)
    assert await a.state() == "CLOSED"  # fewer than min_calls: no verdict yet
    await a.record(False)
    # The burst opens the breaker at once on the instance that saw it, not an interval later.
    assert await a.state() == "OPEN"
    assert not await a.allow()
    # b still trusts its cache for the rest of its interval, then sees the shared row.
    assert await b.allow()
    clock.advance(CONFIG.sync_interval_seconds)
    assert not await b.allow()
    assert await b.state() == "OPEN"


async def test_successes_dilute_failures_below_the_threshold(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    for _ in range(6):
        await a.record(True)
    clock.advance(CONFIG.sync_interval_seconds)
    await a.state()  # a's successes reach the row...
    for _ in range(3):
        await b.record(False)  # ...so b's failures are judged with them
    clock.advance(CONFIG.sync_interval_seconds)
    await b.state()
    snapshot = await a.snapshot()
    assert snapshot["state"] == "CLOSED"
    assert snapshot["window"]["calls"] == 9
    assert snapshot["window"]["failures"] == 3


async def test_outcomes_of_both_instances_add_up_in_the_shared_window(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await a.record(False)
    await a.record(False)
    await b.record(False)
    await b.record(True)
    clock.advance(CONFIG.sync_interval_seconds)
    # Neither saw 4 calls, but together they did: the flush decides on the shared row.
    await a.state()
    await b.state()
    clock.advance(CONFIG.sync_interval_seconds)
    assert await a.state() == "OPEN"
    assert await b.state() == "OPEN"


async def test_the_window_slides(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, _ = pair
    for _ in range(3):
        await a.record(False)
    clock.advance(CONFIG.window_seconds + 1)
    await a.record(False)
    # The three old failures have left the window: one failure in one call is < min_calls.
    assert await a.state() == "CLOSED"
    assert (await a.snapshot())["window"]["calls"] == 1


async def test_half_open_permits_are_shared_across_instances(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await _half_open(a, clock)
    granted = [await a.allow(), await b.allow(), await a.allow(), await b.allow(), await a.allow()]
    assert granted.count(True) == CONFIG.half_open_permits
    assert await a.state() == "HALF_OPEN"
    assert await b.state() == "HALF_OPEN"


async def test_a_released_permit_goes_back_to_the_shared_pool(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await _half_open(a, clock)
    assert [await a.allow() for _ in range(4)] == [True, True, True, False]
    await a.release()  # that probe met a poison message: it proved nothing
    assert await b.allow()
    assert not await b.allow()


async def test_concurrent_probe_requests_get_exactly_the_permits(
    engines: Callable[[], AsyncEngine], clock: FakeClock
) -> None:
    breakers = [
        CircuitBreaker(engines(), CONFIG, name=NAME, clock=clock, instance_id=f"i{i}")
        for i in range(4)
    ]
    await _open(breakers[0])
    clock.advance(CONFIG.open_seconds)
    results = await asyncio.gather(*(b.allow() for b in breakers for _ in range(25)))
    assert results.count(True) == CONFIG.half_open_permits
    snapshot = await breakers[0].snapshot()
    assert snapshot["half_open"]["taken"] == CONFIG.half_open_permits


async def test_probe_successes_close_it_for_both(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await _half_open(a, clock)
    assert await a.allow()
    assert await b.allow()
    assert await a.allow()
    await a.record(True)
    await b.record(True)
    assert await a.state() == "HALF_OPEN"  # two of three probes back
    await a.record(True)
    assert await a.state() == "CLOSED"
    clock.advance(CONFIG.sync_interval_seconds)
    assert await b.state() == "CLOSED"
    assert await b.allow()
    snapshot = await b.snapshot()
    assert snapshot["window"]["calls"] == 0  # a fresh window after closing
    assert snapshot["seconds_unhealthy"] == 0


async def test_a_probe_failure_reopens_it(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await _half_open(a, clock)
    first_opened = (await a.snapshot())["opened_at"]
    assert await a.allow()
    assert await b.allow()
    await b.record(False)
    assert await b.state() == "OPEN"
    snapshot = await b.snapshot()
    assert snapshot["opened_at"] != first_opened  # the open period starts again
    # ...but the episode did not: "open too long" measures from the first opening.
    assert snapshot["seconds_unhealthy"] == CONFIG.open_seconds
    clock.advance(CONFIG.sync_interval_seconds)
    assert await a.state() == "OPEN"
    # a's probe was in flight when b's failed: its late result changes nothing.
    await a.record(True)
    assert await a.state() == "OPEN"
    assert not await a.allow()


async def test_force_open_and_closed_is_seen_by_both(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    assert await b.allow()
    await a.force("OPEN", actor="alice")
    clock.advance(CONFIG.sync_interval_seconds)
    assert not await b.allow()
    # Forced open stays open past open_seconds and never hands out probes.
    clock.advance(CONFIG.open_seconds * 3)
    assert not await a.allow()
    assert not await b.allow()
    assert (await b.snapshot())["forced"] == "OPEN"

    await b.force("CLOSED", actor="bob")
    clock.advance(CONFIG.sync_interval_seconds)
    assert await a.allow()
    # Forced closed ignores a failure burst.
    for _ in range(CONFIG.min_calls * 2):
        await a.record(False)
    clock.advance(CONFIG.sync_interval_seconds)
    assert await a.state() == "CLOSED"
    assert (await a.snapshot())["window"]["failures"] == CONFIG.min_calls * 2

    await a.force(None, actor="alice")
    await a.record(False)  # back under automatic control: the window already says open
    assert await a.state() == "OPEN"
    assert (await a.snapshot())["forced"] is None


async def test_transitions_are_reported_to_callbacks_metrics_and_logs(
    engines: Callable[[], AsyncEngine], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    a = CircuitBreaker(engines(), CONFIG, name=NAME, clock=clock, registry=registry_a)
    b = CircuitBreaker(engines(), CONFIG, name=NAME, clock=clock, registry=registry_b)
    seen_a: list[Transition] = []
    seen_b: list[Transition] = []
    a.on_transition.append(seen_a.append)

    async def on_b(transition: Transition) -> None:
        seen_b.append(transition)

    b.on_transition.append(on_b)
    await b.state()
    caplog.set_level("INFO", logger="retry.breaker")
    await _open(a)
    clock.advance(CONFIG.sync_interval_seconds)
    await b.state()

    assert [(t.from_state, t.to_state, t.local) for t in seen_a] == [("CLOSED", "OPEN", True)]
    assert [(t.from_state, t.to_state, t.local) for t in seen_b] == [("CLOSED", "OPEN", False)]

    def sample(registry: CollectorRegistry, metric: str, **labels: str) -> Any:
        return registry.get_sample_value(metric, {"name": NAME, **labels})

    assert sample(registry_a, "steadfast_breaker_state") == 2
    assert sample(registry_b, "steadfast_breaker_state") == 2
    transitions = {"from_state": "CLOSED", "to_state": "OPEN"}
    # Counted once, by the instance that decided it (the other's series exists, at 0).
    assert sample(registry_a, "steadfast_breaker_transitions_total", **transitions) == 1
    assert sample(registry_b, "steadfast_breaker_transitions_total", **transitions) == 0

    records = [
        r for r in caplog.records if getattr(r, "event.action", None) == "breaker_transition"
    ]
    assert len(records) == 1
    assert getattr(records[0], "breaker.to_state") == "OPEN"
    assert "failure rate" in getattr(records[0], "event.reason")


async def test_the_row_stays_bounded_under_sustained_traffic(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock, database_url: str
) -> None:
    a, _ = pair
    for _ in range(300):
        for _ in range(10):
            await a.record(True)
        clock.advance(0.5)
    await a.snapshot()
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    try:
        async with engine.connect() as conn:
            window = (
                await conn.execute(
                    select(circuit_breakers.c.window).where(circuit_breakers.c.name == NAME)
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert len(window["buckets"]) <= CONFIG.buckets


async def test_lazy_sync_writes_at_most_once_per_interval(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock
) -> None:
    a, b = pair
    await a.allow()
    version = (await b.snapshot())["version"]
    for _ in range(1000):
        await a.record(True)
    # Within the interval all of it stays in a's memory: no write.
    assert (await b.snapshot())["version"] == version
    clock.advance(CONFIG.sync_interval_seconds)
    await a.record(True)  # the first call after the interval flushes everything, once
    snapshot = await b.snapshot()
    assert snapshot["version"] == version + 1
    assert snapshot["window"]["calls"] == 1001


async def test_a_started_breaker_notices_transitions_without_being_called(
    engines: Callable[[], AsyncEngine], clock: FakeClock
) -> None:
    fast = BreakerConfig(window_seconds=10, min_calls=4, open_seconds=5, sync_interval_seconds=0.05)
    a = CircuitBreaker(engines(), fast, name=NAME, clock=clock, instance_id="a")
    b = CircuitBreaker(engines(), fast, name=NAME, clock=clock, instance_id="b")
    seen: asyncio.Queue[str] = asyncio.Queue()
    b.on_transition.append(lambda t: seen.put_nowait(t.to_state))
    async with b:  # the background loop: the consumer pauses/resumes from these callbacks
        await _open(a)
        assert await asyncio.wait_for(seen.get(), timeout=5) == "OPEN"
        clock.advance(fast.open_seconds)
        # Nobody calls b, yet its loop moves the shared row on to HALF_OPEN.
        assert await asyncio.wait_for(seen.get(), timeout=5) == "HALF_OPEN"
    # stop() flushed and ended the loop.
    assert b._task is None


async def test_deleting_the_row_resets_the_breaker(
    pair: tuple[CircuitBreaker, CircuitBreaker], clock: FakeClock, database_url: str
) -> None:
    a, _ = pair
    await _open(a)
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    try:
        async with engine.begin() as conn:
            await conn.execute(circuit_breakers.delete().where(circuit_breakers.c.name == NAME))
    finally:
        await engine.dispose()
    clock.advance(CONFIG.sync_interval_seconds)
    assert await a.state() == "CLOSED"  # recreated with the defaults, not stuck on an error
    assert await a.allow()
