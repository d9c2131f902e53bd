"""The breaker's hot path costs no database round trip per call.

With the real clock and a real database, a flush happens every sync interval; in between,
`allow` and `record` touch memory only. The bound is loose (it guards against a per-call
query sneaking in, which would cap this at a few thousand calls per second), and the
measured rate is logged (see it with -o log_cli=true).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry.breaker import CircuitBreaker
from retry.breaker_machine import BreakerConfig
from retry.clock import SystemClock

pytestmark = pytest.mark.postgres

log = logging.getLogger(__name__)
CALLS = 50_000


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    yield engine
    await engine.dispose()


async def test_allow_and_record_run_from_memory_between_syncs(engine: AsyncEngine) -> None:
    breaker = CircuitBreaker(
        engine,
        BreakerConfig(min_calls=20, failure_rate_threshold=0.5, sync_interval_seconds=0.2),
        name="throughput",
        clock=SystemClock(),
        instance_id="bench",
    )
    await breaker.allow()
    started = time.perf_counter()
    for i in range(CALLS):
        if await breaker.allow():
            await breaker.record(i % 10 != 0)  # 10% failures: below the threshold
    elapsed = time.perf_counter() - started
    rate = CALLS / elapsed
    log.warning("breaker allow()+record(): %.0f calls/s over %.2fs", rate, elapsed)
    snapshot = await breaker.snapshot()
    assert snapshot["state"] == "CLOSED"
    # One write per elapsed interval at most (plus the snapshot's own flush).
    assert snapshot["version"] <= elapsed / 0.2 + 3
    assert rate > 20_000
