"""The relay: claim a batch of outbox rows, publish it, mark it published or release it.

Runs in the caller's thread (confluent-kafka is synchronous), plus one helper thread
that claims the next batch while the current one is in flight. It drains without
pausing while rows keep coming, then sleeps until a writer's NOTIFY or the poll interval,
whichever is first. Several relays may run at once: claims skip each other's rows and keep per-key
order (see `outbox.store.CLAIM_SQL`). When the broker is unreachable, rows stay pending
and the relay backs off; when it returns, the relay carries on by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from outbox.backoff import Backoff
from outbox.errors import PublishError, StoreUnavailableError
from outbox.event import ClaimedEvent
from outbox.kafka import KafkaPublisher
from outbox.listener import PgListener, Wakeup
from outbox.metrics import OutboxMetrics
from outbox.publisher import Publisher, PublishResult
from outbox.store import OutboxStore

__all__ = [
    "BatchOutcome",
    "KafkaPublisher",
    "PgListener",
    "PublishObserver",
    "PublishResult",
    "Publisher",
    "Relay",
    "Wakeup",
]

log = logging.getLogger(__name__)

# Retention deletes at most this many rows per round, so a large cleanup never holds up
# publication (or a stop) for long.
_CLEANUP_BATCH = 5000
_CLEANUP_BATCHES = 4


PublishObserver = Callable[[Sequence[ClaimedEvent], Sequence[PublishResult], float], None]
"""Told of every published batch: the events, their delivery reports and when publishing
began (epoch seconds); e.g. to record a span per event. It runs on the relay's thread."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    claimed: int = 0
    published: int = 0
    failed: int = 0

    @property
    def broker_down(self) -> bool:
        """Nothing in a non-empty batch got through: a relay-wide failure, not a bad row."""
        return self.claimed > 0 and self.published == 0


class Relay:
    """Moves outbox rows to a `Publisher` until `stop()` is called."""

    def __init__(
        self,
        *,
        store: OutboxStore,
        publisher: Publisher,
        owner: str,
        metrics: OutboxMetrics,
        wakeup: Wakeup | None = None,
        batch_size: int = 500,
        max_batch_size: int | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        retention: timedelta | None = timedelta(hours=24),
        cleanup_interval: float = 60.0,
        stats_interval: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: PublishObserver | None = None,
    ) -> None:
        if batch_size < 1 or lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("batch_size, lease_seconds and poll_interval must be positive")
        self._store = store
        self._publisher = publisher
        self.owner = owner
        self._metrics = metrics
        self._wakeup = wakeup
        self._batch_size = batch_size
        self._max_batch_size = max(batch_size, max_batch_size or 8 * batch_size)
        # Grows while claims come back full (a backlog: fewer, larger round trips) and
        # shrinks back as they come back short (steady traffic: small, quick batches).
        self._next_size = batch_size
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._retention = retention
        self._cleanup_interval = cleanup_interval
        self._stats_interval = stats_interval
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._observer = observer
        self._stopping = threading.Event()
        self._next_stats = 0.0
        self._next_cleanup = 0.0
        # Rows the broker acknowledged but the database did not hear of yet (it was down):
        # marked first on the next round, so a short database blip re-publishes nothing.
        self._unmarked: list[int] = []

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Relay until `stop()`; returns within about a second of it (plus a batch's marking).

        While one batch is in flight, the next one is claimed on a helper thread, so the
        database and the broker work at the same time. That claim cannot take a later row
        of a key in the flying batch: the flying batch's leases hold such rows back.
        """
        log.info(
            "outbox relay started",
            extra={"event.action": "outbox_relay_started", "owner": self.owner},
        )
        next_batch: Future[list[ClaimedEvent]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-claim") as claimer:
            try:
                while not self._stopping.is_set():
                    self._housekeeping()
                    try:
                        self._mark_unmarked()
                        if next_batch is None:
                            events = self._claim()
                        else:
                            claimed, next_batch = next_batch, None
                            events = claimed.result()
                        if events and not self._stopping.is_set():
                            next_batch = claimer.submit(self._claim)
                        outcome = self._publish(events)
                    except StoreUnavailableError as exc:
                        self._back_off("database", str(exc))
                        continue
                    if outcome.broker_down:
                        self._back_off("broker", f"{outcome.failed} events not delivered")
                        continue
                    self._backoff.reset()
                    if outcome.claimed == 0:
                        self._wait_for_work()
            finally:
                if next_batch is not None:
                    self._release_unpublished(next_batch)
        log.info(
            "outbox relay stopped",
            extra={"event.action": "outbox_relay_stopped", "owner": self.owner},
        )

    def run_once(self) -> BatchOutcome:
        """One round, without overlap: claim, publish, settle. Raises StoreUnavailableError."""
        self._mark_unmarked()
        return self._publish(self._claim())

    def _claim(self) -> list[ClaimedEvent]:
        # Claims never overlap (the next starts once the previous one's result is
        # taken), so only one thread at a time reads and sets the size.
        size = self._next_size
        events = self._store.claim(size, self.owner, self._lease_seconds)
        if len(events) >= size:
            self._next_size = min(self._max_batch_size, size * 2)
        elif len(events) < size // 2:
            self._next_size = max(self._batch_size, size // 2)
        return events

    def _mark_unmarked(self) -> None:
        if self._unmarked:
            self._store.mark_published(self._unmarked, self.owner)
            self._unmarked = []

    def _publish(self, events: list[ClaimedEvent]) -> BatchOutcome:
        if not events:
            return BatchOutcome()
        self._metrics.batch_size.observe(len(events))
        started = time.time()
        results = self._publisher.publish(events, cancelled=self._stopping.is_set)
        if self._observer is not None:
            self._observer(events, results, started)
        return self._settle(events, results)

    def _release_unpublished(self, batch: Future[list[ClaimedEvent]]) -> None:
        # A batch claimed ahead when the relay stopped: free it now rather than leave it
        # leased until its lease runs out.
        try:
            ids = [event.id for event in batch.result()]
            self._store.release_failed(ids, self.owner, "relay stopped before publishing")
        except StoreUnavailableError as exc:
            log.warning(
                "claimed rows not released at stop; their lease will expire",
                extra={"event.action": "outbox_release_failed", "error.message": str(exc)},
            )

    def _settle(self, events: Sequence[ClaimedEvent], results: list[PublishResult]) -> BatchOutcome:
        by_id = {event.id: event for event in events}
        delivered = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        published_ids = [r.id for r in delivered]
        for result in delivered:
            if result.delivered_at is not None:
                created = by_id[result.id].created_at.timestamp()
                self._metrics.publish_latency.observe(max(0.0, result.delivered_at - created))
        self._metrics.published.inc(len(delivered))
        if published_ids:
            try:
                marked = self._store.mark_published(published_ids, self.owner)
            except StoreUnavailableError:
                self._unmarked = published_ids
                raise
            if marked < len(published_ids):
                # Our lease expired and another relay took the rows: it will publish
                # them again. Visible duplicates, so say so loudly.
                log.warning(
                    "lease lost before marking; events will be published again",
                    extra={
                        "event.action": "outbox_lease_lost",
                        "count": len(published_ids) - marked,
                    },
                )
            log.info(
                "outbox events published",
                extra={
                    "event.action": "outbox_published",
                    "count": len(published_ids),
                    "first_id": published_ids[0],
                    "last_id": published_ids[-1],
                },
            )
        if failed:
            self._release(failed, by_id, whole_batch=not delivered)
        return BatchOutcome(claimed=len(events), published=len(delivered), failed=len(failed))

    def _release(
        self, failed: list[PublishResult], by_id: dict[int, ClaimedEvent], *, whole_batch: bool
    ) -> None:
        # A whole batch failing means the broker is unreachable: the relay itself backs off
        # and the rows are free at once. Single failures are the rows' own problem: they
        # are held back by their attempt count (and hold back their key), the rest flows.
        groups: dict[tuple[str, float], list[int]] = defaultdict(list)
        for result in failed:
            error = result.error or PublishError("unknown")
            self._metrics.publish_errors.labels(reason=error.code).inc()
            delay = 0.0 if whole_batch else self._backoff.delay_for(by_id[result.id].attempts)
            groups[(str(error), delay)].append(result.id)
        for (error_text, delay), ids in groups.items():
            self._store.release_failed(ids, self.owner, error_text, retry_after=delay)
            log.warning(
                "outbox events not published; released for retry",
                extra={
                    "event.action": "outbox_publish_failed",
                    "count": len(ids),
                    "error.message": error_text,
                    "retry_after": delay,
                    "first_id": ids[0],
                },
            )

    def _back_off(self, cause: str, reason: str) -> None:
        delay = self._backoff.next_delay()
        log.warning(
            "outbox relay backing off",
            extra={
                "event.action": "outbox_relay_backoff",
                "cause": cause,
                "error.message": reason,
                "delay": round(delay, 3),
                "failures": self._backoff.failures,
            },
        )
        self._stopping.wait(delay)

    def _wait_for_work(self) -> None:
        deadline = min(self._clock() + self._poll_interval, self._next_housekeeping())
        while not self._stopping.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            # Short slices keep stop() responsive even while LISTEN blocks, and let the
            # publisher serve its statistics and error callbacks while nothing is sent.
            self._publisher.idle()
            step = min(remaining, 0.5)
            if self._wakeup is None:
                self._stopping.wait(step)
            elif self._wakeup.wait(step):
                return

    def _next_housekeeping(self) -> float:
        if self._retention is None:
            return self._next_stats
        return min(self._next_stats, self._next_cleanup)

    def _housekeeping(self) -> None:
        now = self._clock()
        try:
            if now >= self._next_stats:
                self._next_stats = now + self._stats_interval
                pending = self._store.pending_stats()
                self._metrics.pending_rows.set(pending.pending_count)
                self._metrics.oldest_age_seconds.set(pending.oldest_age_seconds)
            if self._retention is not None and now >= self._next_cleanup:
                self._next_cleanup = now + self._cleanup_interval
                deleted = self._store.delete_published_before(
                    self._retention, batch_size=_CLEANUP_BATCH, max_batches=_CLEANUP_BATCHES
                )
                # A full round means more is due: carry on next round, between batches.
                if deleted >= _CLEANUP_BATCH * _CLEANUP_BATCHES:
                    self._next_cleanup = now
                if deleted:
                    log.info(
                        "published outbox rows deleted",
                        extra={"event.action": "outbox_retention_deleted", "count": deleted},
                    )
        except StoreUnavailableError as exc:
            # Bookkeeping only: the next round tries again; claiming reports the outage.
            log.warning(
                "outbox housekeeping skipped",
                extra={"event.action": "outbox_housekeeping_failed", "error.message": str(exc)},
            )
