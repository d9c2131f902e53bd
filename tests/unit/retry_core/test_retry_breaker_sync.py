"""The shared breaker when its database is away: fail static, keep outcomes, don't hammer.

No sockets: the engine is a stand-in whose every transaction fails to start.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from retry.breaker import CircuitBreaker
from retry.breaker_machine import BreakerConfig, BreakerMachine, BreakerState
from retry.clock import FakeClock

CONFIG = BreakerConfig(min_calls=4, sync_interval_seconds=1.0)


class DownEngine:
    def __init__(self) -> None:
        self.attempts = 0

    def begin(self) -> Any:
        self.attempts += 1
        raise OSError("connection refused")


def breaker(engine: DownEngine, clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(cast(AsyncEngine, engine), CONFIG, name="w", clock=clock)


async def test_an_unreachable_database_leaves_the_cached_state_in_charge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, clock = DownEngine(), FakeClock()
    shared = breaker(engine, clock)
    caplog.set_level(logging.WARNING, logger="retry.breaker")
    assert await shared.allow()  # never synced: CLOSED is the only safe guess that works
    for _ in range(50):
        await shared.record(False)  # would trip: but no urgent flush against a dead database
    assert engine.attempts == 1
    assert await shared.state() == "CLOSED"
    clock.advance(CONFIG.sync_interval_seconds)
    await shared.record(False)
    assert engine.attempts == 2  # one try per interval
    actions = {getattr(r, "event.action", None) for r in caplog.records}
    assert actions == {"breaker_sync_failed"}


async def test_outcomes_survive_a_failed_flush() -> None:
    engine, clock = DownEngine(), FakeClock()
    shared = breaker(engine, clock)
    for _ in range(3):
        await shared.record(True)
    await shared.record(False)
    assert shared._pending_calls == 4  # kept for the next flush
    assert shared._pending_failures == 1


async def test_operator_calls_fail_loudly() -> None:
    shared = breaker(DownEngine(), FakeClock())
    with pytest.raises(OSError):
        await shared.snapshot()
    with pytest.raises(OSError):
        await shared.force("OPEN", actor="alice")


async def test_force_refuses_half_open() -> None:
    shared = breaker(DownEngine(), FakeClock())
    with pytest.raises(ValueError, match="forced OPEN or CLOSED"):
        await shared.force("HALF_OPEN", actor="alice")


async def test_an_expired_open_period_does_not_hammer_a_dead_database() -> None:
    engine, clock = DownEngine(), FakeClock()
    shared = breaker(engine, clock)
    # As if the last good sync had seen the row OPEN.
    shared._shared = BreakerMachine(
        CONFIG, state=BreakerState.OPEN, opened_at=clock.now().timestamp()
    )
    shared._last_sync = clock.monotonic()
    clock.advance(CONFIG.open_seconds)
    for _ in range(20):
        assert not await shared.allow()  # no permit can be taken without the row
    assert engine.attempts == 1
