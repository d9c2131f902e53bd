"""Backoff maths for the relay: tenacity's exponential wait with jitter, capped.

The relay waits after failures that concern the whole relay (the broker or the database
is unreachable), and holds single rows back after failures that concern only them.
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential_jitter


class Backoff:
    """Delay before retry number n: about 2**(n-1) seconds plus jitter, never above `max_seconds`.

    Starts at tenacity's initial wait of one second. Counts consecutive failures for the
    relay (`next_delay`/`reset`) and also answers for any attempt number (`delay_for`),
    which the relay uses for rows that failed alone.
    """

    def __init__(self, *, max_seconds: float = 5.0, jitter_seconds: float = 0.5) -> None:
        if max_seconds <= 0 or jitter_seconds < 0:
            raise ValueError("max_seconds must be > 0 and jitter_seconds >= 0")
        self.max_seconds = max_seconds
        self._wait = wait_exponential_jitter(max=max_seconds, jitter=jitter_seconds)
        self._failures = 0
        # tenacity's wait strategies read the attempt number from a call state.
        self._state = RetryCallState(Retrying(), None, (), {})

    @property
    def failures(self) -> int:
        return self._failures

    def delay_for(self, attempt: int) -> float:
        self._state.attempt_number = max(1, attempt)
        return float(self._wait(self._state))

    def next_delay(self) -> float:
        self._failures += 1
        return self.delay_for(self._failures)

    def reset(self) -> None:
        self._failures = 0
