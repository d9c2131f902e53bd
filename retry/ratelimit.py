"""A token bucket: at most `rate_per_second` operations on average, bursts up to `burst`.

The scheduler takes one token per re-drive, so a warehouse that is just recovering is not
hit by the whole backlog at once (a retry storm).

Ours rather than aiolimiter's `AsyncLimiter`: aiolimiter reads time from the event loop
(`loop.time()`) and waits on loop timers, so it cannot be driven by an injected clock, and
its tests would have to sleep for real. This one takes a `Clock` (its `monotonic` for
refills, its `sleep` for waits), so a `FakeClock` makes every wait exact and instant.
"""

from __future__ import annotations

import asyncio
import math
import weakref

from prometheus_client import CollectorRegistry, Counter

from retry.clock import Clock

# One counter per registry, however many buckets are built on it.
_RATE_LIMITED: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _rate_limited_counter(registry: CollectorRegistry) -> Counter:
    if registry not in _RATE_LIMITED:
        _RATE_LIMITED[registry] = Counter(
            "steadfast_redrive_rate_limited",
            "Acquisitions that had to wait for a token from the re-drive rate limiter",
            registry=registry,
        )
    return _RATE_LIMITED[registry]


class TokenBucket:
    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        clock: Clock,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)):
            raise ValueError(f"rate_per_second must be > 0, got {rate_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate_per_second)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # start full: the first burst goes at once
        self._updated = clock.monotonic()
        # Waiters queue here, so tokens go out first come, first served.
        self._queue = asyncio.Lock()
        self._rate_limited = _rate_limited_counter(registry) if registry is not None else None

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def _check(self, n: int) -> None:
        if not 1 <= n <= self.burst:
            raise ValueError(f"can take 1 to {self.burst} tokens at once, asked for {n}")

    def time_until_available(self, n: int = 1) -> float:
        """Seconds until `n` tokens are there (0 if they are now); nothing is taken."""
        self._check(n)
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate)

    def try_acquire(self, n: int = 1) -> bool:
        """Take `n` tokens if they are there now; never waits. Waiters go first."""
        self._check(n)
        if self._queue.locked():
            return False
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def acquire(self, n: int = 1) -> None:
        """Take `n` tokens, waiting exactly as long as the deficit takes to refill."""
        self._check(n)
        async with self._queue:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return
            if self._rate_limited is not None:
                self._rate_limited.inc()
            while True:
                await self._clock.sleep((n - self._tokens) / self.rate)
                self._refill()
                # Float rounding can leave us a hair short after the exact wait.
                if self._tokens >= n - 1e-9:
                    self._tokens = max(0.0, self._tokens - n)
                    return
