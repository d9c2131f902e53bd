"""The circuit breaker's state machine as a pure value: no I/O, no clock of its own.

`BreakerMachine` holds a sliding window of time-bucketed outcome counts and moves
CLOSED -> OPEN -> HALF_OPEN -> CLOSED/OPEN, hands out half-open probe permits and obeys
operator overrides. Every method takes `now` (epoch seconds) from its caller, so unit tests
drive it directly and `retry.breaker` replays it on the shared row under a lock.
`to_row`/`from_row` map it to and from its `circuit_breakers` row (see `retry.breaker_row`).

"Open too long" measures the whole episode: `episode_started_at` is when the breaker last
left CLOSED, because a dependency that stays down cycles OPEN -> HALF_OPEN -> OPEN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    HALF_OPEN = "HALF_OPEN"
    OPEN = "OPEN"


class Admission(StrEnum):
    REFUSED = "REFUSED"
    ALLOWED = "ALLOWED"
    PROBE = "PROBE"
    """Allowed as a half-open probe: its outcome decides the next transition."""


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    window_seconds: float = 10.0
    min_calls: int = 20
    failure_rate_threshold: float = 0.5
    open_seconds: float = 5.0
    half_open_permits: int = 3
    sync_interval_seconds: float = 0.2
    bucket_seconds: float = 1.0
    """Width of one window bucket: the window slides in steps of this size."""
    probe_timeout_seconds: float = 10.0
    """Permits whose probe never reported (its instance died) are issued again after this."""

    def __post_init__(self) -> None:
        for name in ("window_seconds", "open_seconds", "sync_interval_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not 0 < self.bucket_seconds <= self.window_seconds:
            raise ValueError("bucket_seconds must be in (0, window_seconds]")
        if self.window_seconds / self.bucket_seconds > 3600:
            raise ValueError("the window may hold at most 3600 buckets")
        if self.min_calls < 1 or self.half_open_permits < 1:
            raise ValueError("min_calls and half_open_permits must be >= 1")
        if not 0 < self.failure_rate_threshold <= 1:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if not self.probe_timeout_seconds > 0:
            raise ValueError("probe_timeout_seconds must be > 0")

    @property
    def buckets(self) -> int:
        return math.ceil(self.window_seconds / self.bucket_seconds)


@dataclass(frozen=True)
class Change:
    from_state: BreakerState
    to_state: BreakerState
    reason: str


@dataclass
class BreakerMachine:
    """The breaker's state machine as a plain value; `changes` collects its transitions."""

    config: BreakerConfig
    state: BreakerState = BreakerState.CLOSED
    opened_at: float | None = None
    episode_started_at: float | None = None
    half_open_at: float | None = None
    permits_taken: int = 0
    probe_successes: int = 0
    forced: BreakerState | None = None
    buckets: dict[int, list[int]] = field(default_factory=dict)
    """bucket index (epoch // bucket_seconds) -> [ok, failed]"""
    changes: list[Change] = field(default_factory=list)

    # -- the window ----------------------------------------------------------------------

    def bucket_of(self, now: float) -> int:
        return math.floor(now / self.config.bucket_seconds)

    def _oldest_bucket(self, now: float) -> int:
        return self.bucket_of(now) - self.config.buckets + 1

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the window ending now."""
        oldest = self._oldest_bucket(now)
        calls = failures = 0
        for index, (ok, failed) in self.buckets.items():
            if index >= oldest:
                calls += ok + failed
                failures += failed
        return calls, failures

    def prune(self, now: float) -> None:
        oldest = self._oldest_bucket(now)
        for index in [i for i in self.buckets if i < oldest]:
            del self.buckets[index]

    def add(self, outcomes: Mapping[int, tuple[int, int]], now: float) -> None:
        """Count (ok, failed) per bucket; outcomes that arrive while not CLOSED are dropped
        (calls in flight when the breaker opened say nothing about the next window)."""
        if self.state is not BreakerState.CLOSED:
            return
        for index, (ok, failed) in outcomes.items():
            counts = self.buckets.setdefault(index, [0, 0])
            counts[0] += ok
            counts[1] += failed
        self.prune(now)
        if self.forced is not None:
            return
        calls, failures = self.counts(now)
        rate = failures / calls if calls else 0.0
        if calls >= self.config.min_calls and rate >= self.config.failure_rate_threshold:
            self._open(
                now,
                f"failure rate {rate:.2f} >= {self.config.failure_rate_threshold}"
                f" over {calls} calls",
            )

    def record(self, success: bool, now: float) -> None:
        self.add({self.bucket_of(now): (1, 0) if success else (0, 1)}, now)

    # -- transitions ----------------------------------------------------------------------

    def _move(self, to: BreakerState, reason: str) -> None:
        if to is not self.state:
            self.changes.append(Change(self.state, to, reason))
            self.state = to
        self.permits_taken = self.probe_successes = 0
        self.half_open_at = None

    def _open(self, now: float, reason: str) -> None:
        self._move(BreakerState.OPEN, reason)
        self.opened_at = now
        if self.episode_started_at is None:
            self.episode_started_at = now
        self.buckets.clear()

    def _close(self, reason: str) -> None:
        self._move(BreakerState.CLOSED, reason)
        self.opened_at = self.episode_started_at = None
        self.buckets.clear()  # a fresh window: the failures that opened it are history

    def tick(self, now: float) -> None:
        """Apply the transitions that time alone causes."""
        if self.forced is not None:
            return
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            if now - self.opened_at >= self.config.open_seconds:
                self._move(BreakerState.HALF_OPEN, f"open for {self.config.open_seconds}s")
                self.half_open_at = now
        elif self.state is BreakerState.HALF_OPEN and self.half_open_at is not None:
            if now - self.half_open_at >= self.config.probe_timeout_seconds:
                # Probes that never reported are lost (their instance died): issue them again.
                self.permits_taken = self.probe_successes
                self.half_open_at = now
        elif self.state is BreakerState.CLOSED:
            self.prune(now)

    def allow(self, now: float) -> Admission:
        if self.forced is not None:
            forced_open = self.forced is BreakerState.OPEN
            return Admission.REFUSED if forced_open else Admission.ALLOWED
        self.tick(now)
        if self.state is BreakerState.CLOSED:
            return Admission.ALLOWED
        if (
            self.state is BreakerState.HALF_OPEN
            and self.permits_taken < self.config.half_open_permits
        ):
            self.permits_taken += 1
            return Admission.PROBE
        return Admission.REFUSED

    def probe_result(self, success: bool, now: float) -> None:
        if self.state is not BreakerState.HALF_OPEN or self.forced is not None:
            return  # a late probe: another instance's probes already decided
        if not success:
            self._open(now, "half-open probe failed")
            return
        self.probe_successes += 1
        if self.probe_successes >= self.config.half_open_permits:
            self._close(f"{self.probe_successes} half-open probes succeeded")

    def release_permit(self) -> None:
        """A probe whose call said nothing about the dependency gives its permit back."""
        if self.state is BreakerState.HALF_OPEN and self.permits_taken > self.probe_successes:
            self.permits_taken -= 1

    def force(self, state: BreakerState | None, now: float, reason: str) -> None:
        """Operator override: forced OPEN stays open and forced CLOSED stays closed until
        unforced; unforcing leaves the state as it is and lets time and outcomes move it."""
        self.forced = state
        if state is BreakerState.OPEN and self.state is not BreakerState.OPEN:
            self._open(now, reason)
        elif state is BreakerState.CLOSED and self.state is not BreakerState.CLOSED:
            self._close(reason)

    def seconds_unhealthy(self, now: float) -> float:
        """How long since the breaker last left CLOSED (0 while CLOSED)."""
        if self.state is BreakerState.CLOSED or self.episode_started_at is None:
            return 0.0
        return max(0.0, now - self.episode_started_at)

    # -- the row ----------------------------------------------------------------------------

    def to_row(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "opened_at": _datetime(self.opened_at),
            "half_open_permits": self.permits_taken,
            "half_open_successes": self.probe_successes,
            "forced": self.forced.value if self.forced else None,
            "window": {
                "bucket_seconds": self.config.bucket_seconds,
                "buckets": [[i, ok, failed] for i, (ok, failed) in sorted(self.buckets.items())],
                "episode_started_at": self.episode_started_at,
                "half_open_at": self.half_open_at,
            },
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], config: BreakerConfig) -> BreakerMachine:
        window = row["window"] if isinstance(row["window"], dict) else {}
        buckets: dict[int, list[int]] = {}
        # Buckets written with another width can't be merged with ours: start afresh.
        if window.get("bucket_seconds") == config.bucket_seconds:
            buckets = {int(i): [int(ok), int(failed)] for i, ok, failed in window["buckets"]}
        forced = row["forced"]
        return cls(
            config=config,
            state=BreakerState(row["state"]),
            opened_at=row["opened_at"].timestamp() if row["opened_at"] else None,
            episode_started_at=window.get("episode_started_at"),
            half_open_at=window.get("half_open_at"),
            permits_taken=int(row["half_open_permits"]),
            probe_successes=int(row["half_open_successes"]),
            forced=BreakerState(forced) if forced else None,
            buckets=buckets,
        )


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
