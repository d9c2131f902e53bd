"""Re-drive: claim due rows in batches and run them again, rate-limited and breaker-aware.

`Redriver.run_once` is one pass: claim a batch (SKIP LOCKED + lease), take a token per
row from the limiter, re-drive up to `concurrency` rows at once through the processor,
and claim the next batch while they come back full. It stops early and gives the rest
of a batch back when the breaker refuses (so a recovering dependency is not hammered)
or when the batch has used half its lease waiting on the limiter (so another scheduler
never claims a row this one is still about to run).

`build_scheduler` puts the pass on an APScheduler interval or cron trigger (one run at a
time, missed runs coalesced), next to a job that refreshes the retry-rows gauge and an
optional alerts-evaluation hook.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge

from retry.errors import LeaseLost
from retry.processor import Processor, RedriveOutcome
from retry.rows import RetryRow
from retry.schema import RETRY_STATES
from retry.store import RetryStore

log = logging.getLogger(__name__)


class Limiter(Protocol):
    """One token per re-drive (`retry.ratelimit.TokenBucket`; it counts its own waits)."""

    async def acquire(self) -> object: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...


class _Monotonic:
    def monotonic(self) -> float:
        return time.monotonic()


# Redrivers rebuilt on one registry share its collectors (registering twice is an error).
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Counter, Gauge]] = (
    weakref.WeakKeyDictionary()
)


def _metrics_on(registry: CollectorRegistry) -> tuple[Counter, Gauge]:
    if registry not in _METRICS:
        outcomes = Counter("steadfast_redrive", "Re-drive outcomes", ["outcome"], registry=registry)
        for outcome in RedriveOutcome:
            outcomes.labels(outcome.value)
        rows = Gauge(
            "steadfast_retry_rows", "Rows in the retry table by state", ["state"], registry=registry
        )
        _METRICS[registry] = (outcomes, rows)
    return _METRICS[registry]


class Redriver:
    def __init__(
        self,
        store: RetryStore,
        processor: Processor,
        limiter: Limiter,
        *,
        batch_size: int = 100,
        lease_seconds: float = 30.0,
        concurrency: int = 16,
        owner: str,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        if batch_size < 1 or lease_seconds <= 0 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1 and lease_seconds > 0")
        self._store = store
        self._processor = processor
        self._limiter = limiter
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._concurrency = concurrency
        # Unique per process: two schedulers started with the same instance name must
        # still not be able to finish each other's rows.
        self.owner = f"{owner}:{secrets.token_hex(4)}"
        self._clock = clock or _Monotonic()
        self._outcomes, self._rows = _metrics_on(registry or CollectorRegistry())

    async def run_once(self) -> dict[str, int]:
        """One pass; returns how many rows ended in each outcome.

        Batches follow each other while they come back full, so a backlog drains at the
        limiter's rate rather than at one batch per trigger; the pass ends at a short
        batch, when the breaker refuses, or after a lease's worth of time.
        """
        tally: Tally[str] = Tally()
        started = self._clock.monotonic()
        claimed = 0
        while self._clock.monotonic() - started < self._lease_seconds:
            if await self._processor.breaker_state() == "OPEN":
                # Claiming rows only to hand them straight back would churn the table.
                log.debug("breaker open: no re-drive", extra={"event.action": "redrive_paused"})
                break
            rows = await self._store.claim_due(
                self._batch_size,
                self.owner,
                self._lease_seconds,
                handler=self._processor.handler_name,
            )
            claimed += len(rows)
            if not rows or await self._redrive_batch(rows, tally):
                break
            if len(rows) < self._batch_size:
                break
        if claimed:
            log.info(
                "re-drive pass done",
                extra={
                    "event.action": "redrive_pass",
                    "retry.claimed": claimed,
                    **{f"retry.{outcome}": n for outcome, n in tally.items()},
                },
            )
        return dict(tally)

    async def _redrive_batch(self, rows: Sequence[RetryRow], tally: Tally[str]) -> bool:
        """Re-drive a claimed batch, `concurrency` rows at a time; True ends the pass.

        The claim never returns two rows of one key (a key's later row waits while an
        earlier one is open), so running a batch's rows at once keeps per-key order.
        """
        started = self._clock.monotonic()
        slots = asyncio.Semaphore(self._concurrency)
        refused = asyncio.Event()  # the breaker said no: launch nothing more
        failures: list[Exception] = []

        async def one(row: RetryRow) -> None:
            try:
                outcome = await self._processor.redrive(row, self.owner)
            except Exception as exc:
                # The row's own lease brings it back; the pass stops and reports it.
                failures.append(exc)
                return
            finally:
                slots.release()
            tally[outcome.value] += 1
            self._outcomes.labels(outcome.value).inc()
            if outcome is RedriveOutcome.SKIPPED_BREAKER:
                refused.set()

        launched = 0
        why = ""
        try:
            async with asyncio.TaskGroup() as group:
                for row in rows:
                    if self._clock.monotonic() - started > self._lease_seconds / 2:
                        why = "lease budget spent waiting for tokens"
                        break
                    await slots.acquire()
                    if refused.is_set() or failures:
                        slots.release()
                        break
                    await self._limiter.acquire()
                    group.create_task(one(row))
                    launched += 1
        except BaseException:
            await self._give_back(rows[launched:], "re-drive pass failed")
            raise
        rest = rows[launched:]
        if refused.is_set():
            await self._give_back(rest, "breaker open")
            tally[RedriveOutcome.SKIPPED_BREAKER.value] += len(rest)
            self._outcomes.labels(RedriveOutcome.SKIPPED_BREAKER.value).inc(len(rest))
        elif failures:
            await self._give_back(rest, "re-drive pass failed")
            raise failures[0]
        elif rest:
            await self._give_back(rest, why)
        return bool(rest) or refused.is_set()

    async def refresh_metrics(self) -> dict[str, int]:
        counts = await self._store.counts_by_state()
        for state in RETRY_STATES:
            self._rows.labels(state).set(counts.get(state, 0))
        return counts

    async def _give_back(self, rows: Sequence[RetryRow], why: str) -> None:
        for row in rows:
            try:
                await self._store.release(row.id, self.owner, reason=why)
            except LeaseLost:
                pass  # another scheduler already has it: nothing to give back
            except Exception:
                # Best effort: an unreleased row comes back when its lease expires.
                log.exception("release failed", extra={"event.action": "redrive_release_failed"})
                return
        if rows:
            log.info(why, extra={"event.action": "redrive_released", "retry.released": len(rows)})


def _guarded(name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """Log a failed run as one structured line; the next run tries again."""

    async def run() -> None:
        try:
            await job()
        except Exception:
            log.exception(f"{name} run failed", extra={"event.action": f"{name}_run_failed"})

    return run


def build_scheduler(
    redriver: Redriver,
    *,
    interval_seconds: float | None = None,
    cron: str | None = None,
    metrics_interval_seconds: float = 15.0,
    alerts: Callable[[], Awaitable[object]] | None = None,
    alerts_interval_seconds: float = 15.0,
) -> AsyncIOScheduler:
    """An (unstarted) scheduler with the re-drive job; `cron` wins over `interval_seconds`.

    Start it inside the running event loop. `alerts` is an optional coroutine function
    evaluated on its own interval (e.g. the threshold checks of `retry.alerts`).
    """
    trigger: BaseTrigger
    if cron:
        trigger = CronTrigger.from_crontab(cron, timezone=UTC)
    elif interval_seconds is not None and interval_seconds > 0:
        trigger = IntervalTrigger(seconds=interval_seconds, timezone=UTC)
    else:
        raise ValueError("give interval_seconds > 0 or a cron expression")
    scheduler = AsyncIOScheduler(timezone=UTC)
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        _guarded("redrive", redriver.run_once), trigger, id="redrive", name="redrive", **common
    )
    scheduler.add_job(
        _guarded("retry_metrics", redriver.refresh_metrics),
        IntervalTrigger(seconds=metrics_interval_seconds, timezone=UTC),
        id="retry_metrics",
        name="retry_metrics",
        next_run_time=datetime.now(UTC),
        **common,
    )
    if alerts is not None:
        scheduler.add_job(
            _guarded("alerts", alerts),
            IntervalTrigger(seconds=alerts_interval_seconds, timezone=UTC),
            id="alerts",
            name="alerts",
            **common,
        )
    return scheduler
