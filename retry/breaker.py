"""A circuit breaker shared through PostgreSQL, so every instance opens and closes together.

Two layers:

- `BreakerMachine` is the whole state machine as a pure value (no I/O): a sliding window
  of time-bucketed outcome counts, CLOSED -> OPEN -> HALF_OPEN -> CLOSED/OPEN, probe
  permits, operator overrides. Unit tests drive it directly.
- `CircuitBreaker` keeps one machine per name in a `circuit_breakers` row and a cached copy
  of it in memory. The hot path (`allow` while CLOSED, `record`) touches no database: outcomes
  are counted in memory and flushed at most every `sync_interval_seconds` in one short
  transaction (SELECT ... FOR UPDATE, apply to the machine, UPDATE), where transitions are
  decided against the shared row, so instances agree. A flush also refreshes the cache, so
  an instance sees another's transition within one interval. Some things don't wait for
  the interval: a flush is made at once when the cached window plus local outcomes would
  trip the breaker (a failure burst opens it within one round trip), half-open permits are
  taken in the row (N instances share `half_open_permits` in total), and probe results are
  written immediately.

Sync is lazy (any call makes it when due); `start()` adds a background loop so an idle
instance still flushes, notices OPEN -> HALF_OPEN and fires `on_transition` callbacks.

Time comes from the injected clock, never from the database's now(): opened_at and the
window buckets are written by whichever instance flushes, so tests can move time for all.

The row's columns: state, opened_at (when the current OPEN began), half_open_permits
(permits taken in this half-open round), half_open_successes, forced ("OPEN"/"CLOSED"/NULL),
version (+1 per write), and window, a JSON object:
    {"bucket_seconds": 1.0, "buckets": [[bucket_index, ok, failed], ...],
     "episode_started_at": epoch | null, "half_open_at": epoch | null}
where episode_started_at is when the breaker last left CLOSED: a dependency that stays down
cycles OPEN -> HALF_OPEN -> OPEN, and "open too long" must measure the whole episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retry.clock import Clock, SystemClock
from retry.schema import circuit_breakers

log = logging.getLogger(__name__)

T = TypeVar("T")


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


# -- the shared breaker -------------------------------------------------------------------

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# The machine's edges (an operator's override may add others; those series appear when used).
_EDGES = (
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "steadfast_breaker_state",
            "Circuit breaker state as this process last saw it: 0 closed, 1 half-open, 2 open.",
            ["name"],
            registry=registry,
        )
        self.transitions = Counter(
            "steadfast_breaker_transitions",
            "Breaker transitions decided by this process (each is counted once, cluster-wide).",
            ["name", "from_state", "to_state"],
            registry=registry,
        )


# Several breakers (or several builds of one) may share a registry: register once each.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_on(registry: CollectorRegistry | None) -> _Metrics | None:
    if registry is None:
        return None
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


@dataclass(frozen=True, kw_only=True)
class Transition:
    """What `on_transition` callbacks receive. `local` is False for a transition another
    instance decided and this one only observed when it synced."""

    name: str
    from_state: str
    to_state: str
    reason: str
    at: datetime
    local: bool


TransitionCallback = Callable[[Transition], Awaitable[None] | None]


class CircuitBreaker:
    """One named breaker, shared by every instance through its `circuit_breakers` row."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: BreakerConfig | None = None,
        *,
        name: str = "default",
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        instance_id: str = "instance",
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.instance_id = instance_id
        self.on_transition: list[TransitionCallback] = []
        self._engine = engine
        self._clock: Clock = clock or SystemClock()
        self._metrics = _metrics_on(registry)
        # The row as of the last sync, and the version it had.
        self._shared = BreakerMachine(self.config)
        self._version = -1
        self._shared_calls = self._shared_failures = 0
        # Outcomes not yet flushed: bucket index -> [ok, failed], and probe results.
        self._pending: dict[int, list[int]] = {}
        self._pending_calls = self._pending_failures = 0
        self._pending_probes: list[bool | None] = []  # None: a permit given back
        self._probes_held = 0
        self._out_of_permits = False  # until the next sync: don't ask the row again
        self._last_sync: float | None = None
        self._lock = asyncio.Lock()
        # Lanes asking for a probe permit queue here, so once the row says "none left" the
        # rest of the queue is refused from memory instead of each asking the row again.
        self._permit_queue = asyncio.Lock()
        self._row_exists = False
        self._healthy = True
        self._task: asyncio.Task[None] | None = None
        if self._metrics is not None:
            self._metrics.state.labels(name=name).set(0)
            # Every edge starts as a 0 series, so increase() sees the first opening too
            # (a series born at 1 has no earlier sample to increase from).
            for edge in _EDGES:
                self._metrics.transitions.labels(name=name, from_state=edge[0], to_state=edge[1])

    # -- the hot path ------------------------------------------------------------------------

    async def allow(self) -> bool:
        """May a call go to the dependency now? While HALF_OPEN, True means "a probe"."""
        await self._maybe_sync()
        shared = self._shared
        if shared.forced is not None:
            return shared.forced is BreakerState.CLOSED
        if shared.state is BreakerState.CLOSED:
            return True
        if shared.state is BreakerState.OPEN and not self._open_expired(self._epoch()):
            return False
        async with self._permit_queue:
            if self._out_of_permits or not self._healthy:
                return False
            try:
                admission = await self._mutate(lambda m, now: m.allow(now))
            except Exception:
                self._healthy = False  # refuse from memory until a sync gets through again
                log.warning(
                    "breaker permit could not be taken; refusing the call",
                    exc_info=True,
                    extra=self._fields("breaker_sync_failed"),
                )
                return False
            if admission is Admission.PROBE:
                self._probes_held += 1
            elif admission is Admission.REFUSED:
                self._out_of_permits = True
            return admission is not Admission.REFUSED

    async def record(self, success: bool) -> None:
        """Report the outcome of a call that `allow` let through."""
        if self._probes_held and self._shared.state is BreakerState.HALF_OPEN:
            # A probe's outcome decides a transition: write it now, not at the next interval.
            self._probes_held -= 1
            self._pending_probes.append(success)
            await self._sync_safely()
            return
        if self._shared.state is not BreakerState.CLOSED:
            return  # in flight when the breaker opened: says nothing about the next window
        counts = self._pending.setdefault(self._shared.bucket_of(self._epoch()), [0, 0])
        counts[0 if success else 1] += 1
        self._pending_calls += 1
        self._pending_failures += not success
        await self._maybe_sync(urgent=not success and self._would_trip())

    async def release(self) -> None:
        """Report that a call `allow` let through said nothing about the dependency (a
        poison message, a bug of ours). Only matters for a half-open probe: its permit goes
        back, instead of being lost until `probe_timeout_seconds`."""
        if self._probes_held and self._shared.state is BreakerState.HALF_OPEN:
            self._probes_held -= 1
            self._pending_probes.append(None)
            await self._sync_safely()

    def _would_trip(self) -> bool:
        if self._shared.forced is not None:
            return False
        calls = self._shared_calls + self._pending_calls
        failures = self._shared_failures + self._pending_failures
        return (
            calls >= self.config.min_calls
            and failures >= calls * self.config.failure_rate_threshold
        )

    # -- reading and operating ---------------------------------------------------------------

    async def state(self) -> str:
        """The shared state, at most one sync interval old."""
        await self._maybe_sync()
        return self._shared.state.value

    async def seconds_unhealthy(self) -> float:
        """Seconds since the breaker last left CLOSED, 0 while CLOSED: the alert probe."""
        await self._maybe_sync()
        return self._shared.seconds_unhealthy(self._epoch())

    async def snapshot(self) -> dict[str, Any]:
        """A fresh read of the shared row, for operators (`GET /admin/breaker`)."""
        await self._sync()
        shared, now = self._shared, self._epoch()
        calls, failures = shared.counts(now)
        return {
            "name": self.name,
            "state": shared.state.value,
            "forced": shared.forced.value if shared.forced else None,
            "opened_at": _iso(shared.opened_at),
            "unhealthy_since": _iso(shared.episode_started_at),
            "seconds_unhealthy": shared.seconds_unhealthy(now),
            "window": {
                "seconds": self.config.window_seconds,
                "calls": calls,
                "failures": failures,
                "successes": calls - failures,
                "failure_rate": failures / calls if calls else 0.0,
            },
            "half_open": {
                "permits": self.config.half_open_permits,
                "taken": shared.permits_taken,
                "successes": shared.probe_successes,
            },
            "version": self._version,
            "config": asdict(self.config),
        }

    async def force(self, state: str | None, actor: str) -> None:
        """Operator override: "OPEN" or "CLOSED" holds the breaker there; None releases it."""
        target = BreakerState(state.upper()) if state else None
        if target is BreakerState.HALF_OPEN:
            raise ValueError("a breaker can be forced OPEN or CLOSED, or released (None)")
        reason = f"forced {target.value if target else 'released'} by {actor}"
        await self._mutate(lambda m, now: m.force(target, now, reason))
        log.warning(
            "breaker override: %s",
            reason,
            extra={
                **self._fields("breaker_forced"),
                "user.name": actor,
                "breaker.forced": target.value if target else None,
            },
        )

    # -- background sync -----------------------------------------------------------------------

    async def start(self) -> None:
        """Sync every interval in the background (optional: calls sync lazily anyway)."""
        if self._task is None:
            await self._sync_safely()
            self._task = asyncio.create_task(self._loop(), name=f"breaker-sync-{self.name}")

    async def stop(self) -> None:
        """Stop the loop and flush what is still pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._sync_safely()

    async def __aenter__(self) -> CircuitBreaker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        # Real time on purpose: this loop paces I/O; the injected clock decides transitions.
        while True:
            await asyncio.sleep(self.config.sync_interval_seconds)
            await self._sync_safely()

    # -- sync ------------------------------------------------------------------------------------

    def _epoch(self) -> float:
        return self._clock.now().timestamp()

    def _open_expired(self, now: float) -> bool:
        opened_at = self._shared.opened_at
        return opened_at is not None and now - opened_at >= self.config.open_seconds

    def _time_moves_state(self, now: float) -> bool:
        shared = self._shared
        if shared.forced is not None:
            return False
        if shared.state is BreakerState.OPEN:
            return self._open_expired(now)
        return (
            shared.state is BreakerState.HALF_OPEN
            and shared.half_open_at is not None
            and now - shared.half_open_at >= self.config.probe_timeout_seconds
        )

    async def _maybe_sync(self, *, urgent: bool = False) -> None:
        if self._lock.locked():
            if self._last_sync is None:
                # The cache is still the blank default: wait for the first sync to fill it.
                async with self._lock:
                    pass
            return  # a sync is under way; the cache is as fresh as it gets
        interval = self.config.sync_interval_seconds
        if self._task is not None:
            # The background loop keeps the cache fresh; callers step in only if it stalls,
            # so they rarely pay for a round trip.
            interval *= 2
        due = self._last_sync is None or self._clock.monotonic() - self._last_sync >= interval
        # What can't wait for the interval: a window about to trip, an open period that has
        # run out. After a failed sync, though, even these wait: one try per interval, not
        # one per call against a database that is down.
        urgent = self._healthy and (
            urgent
            or (
                self._shared.state is not BreakerState.CLOSED
                and self._time_moves_state(self._epoch())
            )
        )
        if due or urgent:
            await self._sync_safely()

    async def _sync_safely(self) -> None:
        try:
            await self._sync()
            self._healthy = True
        except Exception:
            self._healthy = False
            # Fail static: keep the cached state, keep the outcomes, try again next interval.
            self._last_sync = self._clock.monotonic()
            log.warning(
                "breaker sync failed; using the cached state",
                exc_info=True,
                extra=self._fields("breaker_sync_failed"),
            )

    async def _sync(self) -> None:
        """Flush pending outcomes and apply time transitions on the row; else just read it."""
        if self._pending or self._pending_probes or self._time_moves_state(self._epoch()):
            await self._mutate(lambda m, now: None)
        else:
            await self._run(self._read)

    async def _mutate(self, action: Callable[[BreakerMachine, float], T]) -> T:
        """Lock the row, apply pending outcomes, time and `action`, write back if changed."""

        async def work(conn: AsyncConnection) -> tuple[BreakerMachine, int, T]:
            row = await self._select(conn, lock=True)
            machine = BreakerMachine.from_row(row, self.config)
            before = machine.to_row()
            now = self._epoch()
            machine.tick(now)
            for success in probes:
                if success is None:
                    machine.release_permit()
                else:
                    machine.probe_result(success, now)
            machine.add({i: (ok, failed) for i, (ok, failed) in pending.items()}, now)
            result = action(machine, now)
            version = int(row["version"])
            values = machine.to_row()
            if values != before:
                version += 1
                await conn.execute(
                    update(circuit_breakers)
                    .where(circuit_breakers.c.name == self.name)
                    .values(**values, version=version, updated_at=self._clock.now())
                )
            return machine, version, result

        pending, probes = self._pending, self._pending_probes
        self._pending, self._pending_probes = {}, []
        self._pending_calls = self._pending_failures = 0
        try:
            _, _, result = await self._run(work, write=True)
        except BaseException:
            self._restore(pending, probes)
            raise
        return result

    async def _read(self, conn: AsyncConnection) -> tuple[BreakerMachine, int, None]:
        row = await self._select(conn, lock=False)
        return BreakerMachine.from_row(row, self.config), int(row["version"]), None

    async def _select(self, conn: AsyncConnection, *, lock: bool) -> Mapping[str, Any]:
        query = select(circuit_breakers).where(circuit_breakers.c.name == self.name)
        if lock:
            query = query.with_for_update()
        if self._row_exists:
            row = (await conn.execute(query)).mappings().one_or_none()
            if row is not None:
                return dict(row)
        # First sync of this breaker, or an operator deleted the row to reset it.
        await conn.execute(
            insert(circuit_breakers)
            .values(name=self.name, **BreakerMachine(self.config).to_row())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return dict((await conn.execute(query)).mappings().one())

    async def _run(
        self,
        work: Callable[[AsyncConnection], Awaitable[tuple[BreakerMachine, int, T]]],
        *,
        write: bool = False,
    ) -> tuple[BreakerMachine, int, T]:
        async with self._lock:
            async with self._engine.begin() as conn:
                if write:
                    # Soft state: if the database crashes, losing the last few outcomes is
                    # harmless, and not waiting for the WAL flush shortens the row lock.
                    await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                machine, version, result = await work(conn)
            transitions = self._adopt(machine, version)
        for transition in transitions:
            await self._notify(transition)
        return machine, version, result

    def _restore(self, pending: dict[int, list[int]], probes: list[bool | None]) -> None:
        for index, (ok, failed) in pending.items():
            counts = self._pending.setdefault(index, [0, 0])
            counts[0] += ok
            counts[1] += failed
            self._pending_calls += ok + failed
            self._pending_failures += failed
        self._pending_probes[:0] = probes

    def _adopt(self, machine: BreakerMachine, version: int) -> list[Transition]:
        """Make the row just read or written the cache; say which transitions happened."""
        seen = self._shared.state
        at = self._clock.now()
        transitions: list[Transition] = []
        if machine.changes and machine.changes[0].from_state is not seen:
            # Another instance moved it before we did: we observed that first.
            transitions.append(self._observed(seen, machine.changes[0].from_state, at))
        for change in machine.changes:
            transitions.append(
                Transition(
                    name=self.name,
                    from_state=change.from_state.value,
                    to_state=change.to_state.value,
                    reason=change.reason,
                    at=at,
                    local=True,
                )
            )
        if not machine.changes and machine.state is not seen:
            transitions.append(self._observed(seen, machine.state, at))
        machine.changes.clear()
        self._shared, self._version = machine, version
        self._row_exists = True  # committed: no need to insert it again
        self._shared_calls, self._shared_failures = machine.counts(self._epoch())
        self._last_sync = self._clock.monotonic()
        self._out_of_permits = False
        if machine.state is not BreakerState.HALF_OPEN:
            self._probes_held = 0
        if self._metrics is not None:
            self._metrics.state.labels(name=self.name).set(STATE_VALUE[machine.state])
        for transition in transitions:
            self._log_transition(transition)
        return transitions

    def _observed(self, seen: BreakerState, now_state: BreakerState, at: datetime) -> Transition:
        return Transition(
            name=self.name,
            from_state=seen.value,
            to_state=now_state.value,
            reason="observed on the shared row",
            at=at,
            local=False,
        )

    def _log_transition(self, transition: Transition) -> None:
        if not transition.local:
            log.info(
                "breaker %s: %s -> %s (seen on the shared row)",
                self.name,
                transition.from_state,
                transition.to_state,
                extra={
                    **self._fields("breaker_state_observed"),
                    "breaker.from_state": transition.from_state,
                    "breaker.to_state": transition.to_state,
                },
            )
            return
        if self._metrics is not None:
            self._metrics.transitions.labels(
                name=self.name, from_state=transition.from_state, to_state=transition.to_state
            ).inc()
        level = logging.WARNING if transition.to_state == "OPEN" else logging.INFO
        log.log(
            level,
            "breaker %s: %s -> %s (%s)",
            self.name,
            transition.from_state,
            transition.to_state,
            transition.reason,
            extra={
                **self._fields("breaker_transition"),
                "breaker.from_state": transition.from_state,
                "breaker.to_state": transition.to_state,
                "event.reason": transition.reason,
            },
        )

    async def _notify(self, transition: Transition) -> None:
        for callback in list(self.on_transition):
            try:
                result = callback(transition)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "breaker transition callback failed",
                    extra=self._fields("breaker_callback_failed"),
                )

    def _fields(self, action: str) -> dict[str, Any]:
        return {
            "event.action": action,
            "breaker.name": self.name,
            "service.node.name": self.instance_id,
        }


def _iso(epoch: float | None) -> str | None:
    moment = _datetime(epoch)
    return moment.isoformat() if moment else None
