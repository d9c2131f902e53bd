"""A circuit breaker shared through PostgreSQL, so every instance opens and closes together.

`CircuitBreaker` keeps one `BreakerMachine` (the pure state machine, `retry.breaker_machine`)
per name in a `circuit_breakers` row (`retry.breaker_row`) and a cached copy of it in
memory. The hot path (`allow` while CLOSED, `record`) touches no database: outcomes
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
Metrics are in `retry.breaker_metrics`; every log record of the breaker comes from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from retry.breaker_machine import Admission, BreakerConfig, BreakerMachine, BreakerState
from retry.breaker_metrics import metrics_on
from retry.breaker_row import BreakerRow
from retry.clock import Clock, SystemClock

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        self._clock: Clock = clock or SystemClock()
        self._row = BreakerRow(engine, name, self.config, self._clock)
        self._metrics = metrics_on(registry)
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
        self._healthy = True
        self._task: asyncio.Task[None] | None = None
        if self._metrics is not None:
            self._metrics.begin(name)

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

        def step(machine: BreakerMachine, now: float) -> T:
            machine.tick(now)
            for success in probes:
                if success is None:
                    machine.release_permit()
                else:
                    machine.probe_result(success, now)
            machine.add({i: (ok, failed) for i, (ok, failed) in pending.items()}, now)
            return action(machine, now)

        pending, probes = self._pending, self._pending_probes
        self._pending, self._pending_probes = {}, []
        self._pending_calls = self._pending_failures = 0
        try:
            _, _, result = await self._run(lambda: self._row.apply(step))
        except BaseException:
            self._restore(pending, probes)
            raise
        return result

    async def _read(self) -> tuple[BreakerMachine, int, None]:
        machine, version = await self._row.read()
        return machine, version, None

    async def _run(
        self, access: Callable[[], Awaitable[tuple[BreakerMachine, int, T]]]
    ) -> tuple[BreakerMachine, int, T]:
        async with self._lock:
            machine, version, result = await access()
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
        self._shared_calls, self._shared_failures = machine.counts(self._epoch())
        self._last_sync = self._clock.monotonic()
        self._out_of_permits = False
        if machine.state is not BreakerState.HALF_OPEN:
            self._probes_held = 0
        if self._metrics is not None:
            self._metrics.saw(self.name, machine.state)
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
            self._metrics.decided(self.name, transition.from_state, transition.to_state)
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
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()
