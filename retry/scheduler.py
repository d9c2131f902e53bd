"""Re-drive: claim due rows in batches and run them again, at a cluster-wide rate.

`Redriver.run_once` is one pass: take tokens from the shared budget
(`retry.shared_limit.SharedTokenBucket`, one row every scheduler instance draws from),
claim that many due rows (SKIP LOCKED + lease; never two rows of one key), and hand them
to the batch engine in one call. Tokens not used (fewer rows were due) go back. The pass
stops when the breaker is OPEN (claiming rows only to hand them back would churn the
table), when the engine reports the breaker refused a call (it released those rows), or
after a lease's worth of time, so no row is held past its lease.

`build_scheduler` puts the pass on an APScheduler interval or cron trigger (one run at a
time, missed runs coalesced), next to a job that refreshes the retry-rows gauge and one
that expires old processed-event records.
"""

from __future__ import annotations

import logging
import secrets
import time
import weakref
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import psycopg
import psycopg_pool
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import exc as sa_exc

from retry.batch_model import Delivery, Outcome, Verdict
from retry.rows import RetryRow
from retry.schema import RETRY_STATES

log = logging.getLogger(__name__)

_UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    OSError,
)

# The outcome labels of steadfast_redrive (dashboards and alerts name them).
REDRIVE_OUTCOMES = {
    Verdict.SUCCEEDED: "succeeded",
    Verdict.PARKED: "rescheduled",
    Verdict.PARKED_BEHIND: "rescheduled",
    Verdict.DEAD: "dead",
    Verdict.BLOCKED: "skipped_breaker",
    Verdict.LEASE_LOST: "lease_lost",
    Verdict.DUPLICATE: "duplicate",
}


class Claiming(Protocol):
    """`retry.store.RetryStore`."""

    async def claim_due(
        self, batch_size: int, owner: str, lease_seconds: float, *, handler: str | None = None
    ) -> list[RetryRow]: ...

    async def counts_by_state(self) -> dict[str, int]: ...


class Engine(Protocol):
    """`retry.batch.BatchProcessor`."""

    @property
    def handler_name(self) -> str: ...

    async def process(self, deliveries: Sequence[Delivery]) -> list[Outcome]: ...


class Budget(Protocol):
    """`retry.shared_limit.SharedTokenBucket`."""

    async def acquire(self, want: int, *, max_wait: float) -> int: ...

    async def give_back(self, tokens: int) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...


class _Monotonic:
    def monotonic(self) -> float:
        return time.monotonic()


# Redrivers rebuilt on one registry share its collectors (registering twice is an error).
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Counter, Gauge, Counter]] = (
    weakref.WeakKeyDictionary()
)


def _metrics_on(registry: CollectorRegistry) -> tuple[Counter, Gauge, Counter]:
    if registry not in _METRICS:
        outcomes = Counter("steadfast_redrive", "Re-drive outcomes", ["outcome"], registry=registry)
        for outcome in set(REDRIVE_OUTCOMES.values()):
            outcomes.labels(outcome)
        rows = Gauge(
            "steadfast_retry_rows", "Rows in the retry table by state", ["state"], registry=registry
        )
        limited = Counter(
            "steadfast_redrive_rate_limited",
            "Token requests the shared re-drive budget granted only in part (or not at all)",
            registry=registry,
        )
        _METRICS[registry] = (outcomes, rows, limited)
    return _METRICS[registry]


class Redriver:
    def __init__(
        self,
        store: Claiming,
        engine: Engine,
        budget: Budget,
        breaker_state: Callable[[], Awaitable[str]],
        *,
        batch_size: int = 100,
        lease_seconds: float = 30.0,
        owner: str,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        if batch_size < 1 or lease_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and lease_seconds > 0")
        self._store = store
        self._engine = engine
        self._budget = budget
        self._breaker_state = breaker_state
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        # Unique per process: two schedulers started with the same instance name must
        # still not be able to finish each other's rows.
        self.owner = f"{owner}:{secrets.token_hex(4)}"
        self._clock = clock or _Monotonic()
        self._outcomes, self._rows, self._limited = _metrics_on(registry or CollectorRegistry())

    async def run_once(self) -> dict[str, int]:
        """One pass; returns how many rows ended in each outcome."""
        tally: Tally[str] = Tally()
        started = self._clock.monotonic()
        claimed = 0
        # Half a lease: a batch claimed late in the pass still finishes inside its lease.
        budget_seconds = self._lease_seconds / 2
        while (left := budget_seconds - (self._clock.monotonic() - started)) > 0:
            if await self._breaker_state() == "OPEN":
                log.debug("breaker open: no re-drive", extra={"event.action": "redrive_paused"})
                break
            tokens = await self._budget.acquire(self._batch_size, max_wait=min(left, 1.0))
            if tokens < self._batch_size:
                self._limited.inc()
            if not tokens:
                continue
            try:
                rows = await self._store.claim_due(
                    tokens, self.owner, self._lease_seconds, handler=self._engine.handler_name
                )
            except BaseException:
                await self._budget.give_back(tokens)
                raise
            await self._budget.give_back(tokens - len(rows))
            if not rows:
                break
            claimed += len(rows)
            outcomes = await self._engine.process(
                [Delivery(message=r.to_message(), attempt=r.attempts + 1, row=r) for r in rows]
            )
            refused = 0
            for outcome in outcomes:
                label = REDRIVE_OUTCOMES[outcome.verdict]
                tally[label] += 1
                self._outcomes.labels(label).inc()
                refused += outcome.verdict is Verdict.BLOCKED
            if refused:
                await self._budget.give_back(refused)
                break
            if len(rows) < tokens:
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

    async def refresh_metrics(self) -> dict[str, int]:
        counts = await self._store.counts_by_state()
        for state in RETRY_STATES:
            self._rows.labels(state).set(counts.get(state, 0))
        return counts


def _guarded(name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """Log a failed run as one structured line; the next run tries again."""

    async def run() -> None:
        try:
            await job()
        except _UNAVAILABLE as exc:
            # The database restarting or unreachable: expected, and not worth a traceback.
            log.warning(
                f"{name} run failed: database unavailable",
                extra={
                    "event.action": f"{name}_run_failed",
                    "error.type": type(exc).__name__,
                    "error.message": str(exc)[:500],
                },
            )
        except Exception:
            log.exception(f"{name} run failed", extra={"event.action": f"{name}_run_failed"})

    return run


def build_scheduler(
    redriver: Redriver,
    *,
    interval_seconds: float | None = None,
    cron: str | None = None,
    metrics_interval_seconds: float = 15.0,
    housekeeping: Callable[[], Awaitable[object]] | None = None,
    housekeeping_interval_seconds: float = 300.0,
) -> AsyncIOScheduler:
    """An (unstarted) scheduler with the re-drive job; `cron` wins over `interval_seconds`.

    Start it inside the running event loop. `housekeeping` is an optional coroutine
    function run on its own interval (the processed-events retention sweep).
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
    if housekeeping is not None:
        scheduler.add_job(
            _guarded("housekeeping", housekeeping),
            IntervalTrigger(seconds=housekeeping_interval_seconds, timezone=UTC),
            id="housekeeping",
            name="housekeeping",
            **common,
        )
    return scheduler
