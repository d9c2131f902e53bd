"""Time, injected: every part of the engine that waits or timestamps takes a `Clock`.

`SystemClock` is the real thing. `FakeClock` only moves when a test says so (`advance`),
and its `sleep` advances it instead of waiting, so backoff, rate limits, breaker timing
and alert durations are deterministic in tests.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC: for timestamps shared between processes."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back: for local intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a fake clock advances instead of waiting)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to. `sleeps` records every `sleep` asked for."""

    def __init__(self, start: datetime = EPOCH, *, monotonic_start: float = 1000.0) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._monotonic = monotonic_start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        # Still yield, so other tasks run as they would around a real sleep.
        await asyncio.sleep(0)
