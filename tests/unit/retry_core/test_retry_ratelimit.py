"""The token bucket: bursts, refills and exact waits, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from retry.clock import FakeClock
from retry.ratelimit import TokenBucket

METRIC = "steadfast_redrive_rate_limited_total"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_full_bucket_allows_a_burst_then_refuses(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_second=2, burst=5, clock=clock)
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]


@pytest.mark.parametrize(
    ("elapsed", "available"),
    [(0.0, 0), (0.49, 0), (0.5, 1), (1.0, 2), (2.4, 4), (100.0, 5)],  # never above burst
)
def test_tokens_refill_at_the_rate_up_to_the_burst(
    clock: FakeClock, elapsed: float, available: int
) -> None:
    bucket = TokenBucket(rate_per_second=2, burst=5, clock=clock)
    for _ in range(5):
        assert bucket.try_acquire()
    clock.advance(elapsed)
    granted = 0
    while bucket.try_acquire():
        granted += 1
    assert granted == available


@pytest.mark.parametrize(
    ("n", "taken_before", "wait"),
    [(1, 0, 0.0), (1, 4, 0.25), (3, 4, 0.75), (4, 4, 1.0), (2, 3, 0.25)],
)
def test_time_until_available(clock: FakeClock, n: int, taken_before: int, wait: float) -> None:
    bucket = TokenBucket(rate_per_second=4, burst=4, clock=clock)
    if taken_before:
        assert bucket.try_acquire(taken_before)
    assert bucket.time_until_available(n) == pytest.approx(wait)
    assert bucket.tokens == pytest.approx(4 - taken_before)  # asking takes nothing


async def test_acquire_waits_the_exact_deficit(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_second=10, burst=2, clock=clock)
    await bucket.acquire()
    await bucket.acquire()
    assert clock.sleeps == []  # the burst is free
    await bucket.acquire()
    assert clock.sleeps == [pytest.approx(0.1)]
    await bucket.acquire(2)
    assert clock.sleeps[1] == pytest.approx(0.2)


async def test_sustained_rate_is_the_configured_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_second=50, burst=50, clock=clock)
    started = clock.monotonic()
    for _ in range(550):
        await bucket.acquire()
    # 50 from the burst, then 500 at 50/s.
    assert clock.monotonic() - started == pytest.approx(10.0)


async def test_waiters_are_served_in_order_and_try_acquire_does_not_jump_the_queue(
    clock: FakeClock,
) -> None:
    bucket = TokenBucket(rate_per_second=1, burst=1, clock=clock)
    assert bucket.try_acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert not bucket.try_acquire()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert clock.sleeps == [pytest.approx(1.0)] * 3


async def test_waits_are_counted_when_a_registry_is_given(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    bucket = TokenBucket(rate_per_second=1, burst=1, clock=clock, registry=registry)
    await bucket.acquire()
    assert registry.get_sample_value(METRIC) == 0
    await bucket.acquire()
    await bucket.acquire()
    assert registry.get_sample_value(METRIC) == 2
    # A second bucket on the same registry shares the counter instead of failing.
    TokenBucket(rate_per_second=1, burst=1, clock=clock, registry=registry)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0)])
def test_bad_parameters_are_refused(clock: FakeClock, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_per_second=rate, burst=burst, clock=clock)


@pytest.mark.parametrize("n", [0, 6])
async def test_asking_for_more_than_the_burst_is_an_error(clock: FakeClock, n: int) -> None:
    bucket = TokenBucket(rate_per_second=1, burst=5, clock=clock)
    with pytest.raises(ValueError):
        bucket.try_acquire(n)
    with pytest.raises(ValueError):
        await bucket.acquire(n)
