"""The relay's decisions, with a fake store and publisher: what is marked, what is
released and for how long, when the relay backs off, and how fast it stops."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from outbox.backoff import Backoff
from outbox.errors import PublishError, StoreUnavailableError
from outbox.metrics import OutboxMetrics
from outbox.publisher import PublishResult, never
from outbox.relay import Relay
from outbox.store import ClaimedEvent, PendingStats


def _event(id_: int, key: str = "k", attempts: int = 1) -> ClaimedEvent:
    return ClaimedEvent(
        id=id_,
        event_id=uuid.uuid4(),
        topic="t",
        key=key,
        payload=b"{}",
        headers={},
        created_at=datetime.now(UTC) - timedelta(seconds=1),
        attempts=attempts,
    )


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[ClaimedEvent]] = []
        self.marked: list[list[int]] = []
        self.released: list[tuple[list[int], str, float]] = []
        self.deleted_with: list[float | timedelta] = []
        self.claims = 0
        self.fail_mark = False
        self.mark_shortfall = 0
        self.pending = PendingStats(0, 0.0)
        self.to_delete: list[int] = []

    def claim(self, batch_size: int, owner: str, lease_seconds: float) -> list[ClaimedEvent]:
        self.claims += 1
        return self.batches.pop(0) if self.batches else []

    def mark_published(self, ids: Sequence[int], owner: str) -> int:
        if self.fail_mark:
            raise StoreUnavailableError("down")
        self.marked.append(list(ids))
        return len(ids) - self.mark_shortfall

    def release_failed(
        self, ids: Sequence[int], owner: str, error: str, *, retry_after: float = 0.0
    ) -> int:
        self.released.append((list(ids), error, retry_after))
        return len(ids)

    def delete_published_before(
        self, retention: float | timedelta, *, batch_size: int = 5000, max_batches: int = 1
    ) -> int:
        self.deleted_with.append(retention)
        return self.to_delete.pop(0) if self.to_delete else 0

    def pending_stats(self) -> PendingStats:
        return self.pending


class FakePublisher:
    def __init__(self, fail: Callable[[ClaimedEvent], PublishError | None] = lambda e: None):
        self.fail = fail
        self.calls = 0
        self.idle_calls = 0

    def publish(
        self, events: Sequence[ClaimedEvent], *, cancelled: Callable[[], bool] = never
    ) -> list[PublishResult]:
        self.calls += 1
        results = []
        for event in events:
            error = self.fail(event)
            results.append(
                PublishResult(id=event.id, error=error, delivered_at=None if error else time.time())
            )
        return results

    def idle(self) -> None:
        self.idle_calls += 1

    def close(self) -> None:
        pass


def _relay(
    store: FakeStore, publisher: FakePublisher, **kwargs: Any
) -> tuple[Relay, CollectorRegistry]:
    registry = CollectorRegistry()
    relay = Relay(
        store=store,  # type: ignore[arg-type]
        publisher=publisher,
        owner="me",
        metrics=OutboxMetrics(registry),
        backoff=kwargs.pop("backoff", Backoff(max_seconds=5.0, jitter_seconds=0.0)),
        **kwargs,
    )
    return relay, registry


def test_delivered_rows_are_marked_in_one_call() -> None:
    store = FakeStore()
    store.batches = [[_event(1, "a"), _event(2, "b"), _event(3, "a")]]
    relay, registry = _relay(store, FakePublisher())

    outcome = relay.run_once()

    assert (outcome.claimed, outcome.published, outcome.failed) == (3, 3, 0)
    assert store.marked == [[1, 2, 3]]
    assert store.released == []
    assert registry.get_sample_value("steadfast_outbox_published_total") == 3
    assert registry.get_sample_value("steadfast_outbox_publish_latency_seconds_count") == 3
    assert registry.get_sample_value("steadfast_outbox_batch_size_sum") == 3


def test_a_row_that_fails_alone_is_held_back_by_its_attempts_and_the_rest_flows() -> None:
    store = FakeStore()
    store.batches = [[_event(1), _event(2, "b", attempts=3), _event(3, "c")]]
    too_big = PublishError("too large", code="MSG_SIZE_TOO_LARGE", retriable=False)
    relay, registry = _relay(store, FakePublisher(lambda e: too_big if e.id == 2 else None))

    outcome = relay.run_once()

    assert not outcome.broker_down
    assert store.marked == [[1, 3]]
    # attempt 3 → 2**2 = 4 s (no jitter here): the row, and its key, wait; the relay doesn't.
    assert store.released == [([2], "MSG_SIZE_TOO_LARGE: too large", 4.0)]
    errors = registry.get_sample_value(
        "steadfast_outbox_publish_errors_total", {"reason": "MSG_SIZE_TOO_LARGE"}
    )
    assert errors == 1


def test_a_batch_that_fails_entirely_is_freed_at_once_and_reported_as_broker_down() -> None:
    store = FakeStore()
    store.batches = [[_event(1), _event(2, "b")]]
    timeout = PublishError("Message timed out", code="_MSG_TIMED_OUT")
    relay, _ = _relay(store, FakePublisher(lambda e: timeout))

    outcome = relay.run_once()

    assert outcome.broker_down
    assert store.marked == []
    assert store.released == [([1, 2], "_MSG_TIMED_OUT: Message timed out", 0.0)]


def test_rows_delivered_while_the_database_was_down_are_marked_first_next_round() -> None:
    store = FakeStore()
    store.batches = [[_event(1), _event(2)], [_event(3)]]
    relay, _ = _relay(store, FakePublisher())
    store.fail_mark = True
    with pytest.raises(StoreUnavailableError):
        relay.run_once()

    store.fail_mark = False
    relay.run_once()

    assert store.marked == [[1, 2], [3]]


def test_a_lost_lease_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.batches = [[_event(1), _event(2)]]
    store.mark_shortfall = 1
    relay, _ = _relay(store, FakePublisher())

    with caplog.at_level(logging.WARNING, logger="outbox.relay"):
        relay.run_once()

    assert [r.__dict__["event.action"] for r in caplog.records] == ["outbox_lease_lost"]


def _run_in_thread(relay: Relay) -> threading.Thread:
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return thread


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_loop_backs_off_while_the_broker_is_down_and_resets_after() -> None:
    store = FakeStore()
    store.batches = [[_event(i)] for i in range(1, 4)]
    down = {"yes": True}
    publisher = FakePublisher(
        lambda e: PublishError("x", code="_TRANSPORT") if down["yes"] else None
    )
    backoff = Backoff(max_seconds=0.05, jitter_seconds=0.0)
    relay, _ = _relay(store, publisher, backoff=backoff, poll_interval=0.05)
    thread = _run_in_thread(relay)

    _wait(lambda: backoff.failures >= 2)
    down["yes"] = False
    store.batches.append([_event(9)])
    _wait(lambda: [9] in store.marked)
    relay.stop()
    thread.join(2)

    assert not thread.is_alive()
    assert backoff.failures == 0


def test_the_loop_backs_off_while_the_database_is_down() -> None:
    class DownStore(FakeStore):
        def claim(self, batch_size: int, owner: str, lease_seconds: float) -> list[ClaimedEvent]:
            self.claims += 1
            raise StoreUnavailableError("down")

    store = DownStore()
    backoff = Backoff(max_seconds=0.05, jitter_seconds=0.0)
    relay, _ = _relay(store, FakePublisher(), backoff=backoff)
    thread = _run_in_thread(relay)
    _wait(lambda: backoff.failures >= 3)
    relay.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_stop_interrupts_a_long_idle_wait() -> None:
    store = FakeStore()
    relay, _ = _relay(store, FakePublisher(), poll_interval=30, stats_interval=60)
    thread = _run_in_thread(relay)
    _wait(lambda: store.claims >= 1)

    started = time.monotonic()
    relay.stop()
    thread.join(3)

    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0


class FakeWakeup:
    def __init__(self) -> None:
        self.ring = threading.Event()

    def wait(self, timeout: float) -> bool:
        rang = self.ring.wait(timeout)
        self.ring.clear()
        return rang

    def close(self) -> None:
        pass


def test_an_idle_relay_lets_the_publisher_serve_its_callbacks() -> None:
    # librdkafka delivers statistics and errors only from poll(): an idle relay that never
    # polled would report stale producer gauges forever.
    publisher = FakePublisher()
    relay, _ = _relay(FakeStore(), publisher, poll_interval=30, stats_interval=60)
    thread = _run_in_thread(relay)
    _wait(lambda: publisher.idle_calls >= 3, timeout=3.0)
    relay.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_a_notification_cuts_the_idle_wait_short() -> None:
    store = FakeStore()
    wakeup = FakeWakeup()
    relay, _ = _relay(store, FakePublisher(), wakeup=wakeup, poll_interval=30, stats_interval=60)
    thread = _run_in_thread(relay)
    _wait(lambda: store.claims == 1)

    store.batches.append([_event(1)])
    wakeup.ring.set()
    _wait(lambda: store.marked == [[1]], timeout=1.0)
    relay.stop()
    thread.join(2)


def test_housekeeping_follows_the_injected_clock() -> None:
    now = [1000.0]
    store = FakeStore()
    store.pending = PendingStats(7, 42.5)
    relay, registry = _relay(
        store,
        FakePublisher(),
        clock=lambda: now[0],
        stats_interval=5,
        cleanup_interval=60,
        retention=timedelta(hours=2),
    )
    relay._housekeeping()  # first round: both due
    assert registry.get_sample_value("steadfast_outbox_pending_rows") == 7
    assert registry.get_sample_value("steadfast_outbox_oldest_age_seconds") == 42.5
    assert store.deleted_with == [timedelta(hours=2)]

    store.pending = PendingStats(0, 0.0)
    now[0] += 4.9
    relay._housekeeping()
    assert registry.get_sample_value("steadfast_outbox_pending_rows") == 7
    now[0] += 0.2
    relay._housekeeping()
    assert registry.get_sample_value("steadfast_outbox_pending_rows") == 0
    assert len(store.deleted_with) == 1
    now[0] += 60
    relay._housekeeping()
    assert len(store.deleted_with) == 2


def test_the_batch_claimed_ahead_is_released_when_the_relay_stops() -> None:
    store = FakeStore()
    store.batches = [[_event(1)], [_event(2, "b")]]
    holder: list[Relay] = []

    def stop_during_first_publish(event: ClaimedEvent) -> PublishError | None:
        holder[0].stop()  # batch 2 is being claimed ahead meanwhile
        return None

    relay, _ = _relay(store, FakePublisher(stop_during_first_publish))
    holder.append(relay)
    thread = _run_in_thread(relay)
    thread.join(3)

    assert not thread.is_alive()
    assert store.marked == [[1]]
    assert store.released == [([2], "relay stopped before publishing", 0.0)]


def test_a_large_cleanup_is_spread_over_rounds() -> None:
    now = [0.0]
    store = FakeStore()
    store.to_delete = [20_000, 20_000, 7]  # two full rounds, then the rest
    relay, _ = _relay(store, FakePublisher(), clock=lambda: now[0], retention=timedelta(hours=1))
    for _ in range(4):
        relay._housekeeping()
        now[0] += 1
    assert len(store.deleted_with) == 3  # full, full, rest; then waits cleanup_interval


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"lease_seconds": 0}, {"poll_interval": -1}])
def test_nonsense_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _relay(FakeStore(), FakePublisher(), **kwargs)
