"""`Publisher` on confluent-kafka: an idempotent producer driven by delivery reports.

An event is published only when its delivery report says so. Every delivery report
arrives within `delivery_timeout` (librdkafka's `message.timeout.ms`), so a batch's fate
is known before the relay releases or marks its rows: messages still queued when the
broker goes away end as "timed out", not as sends that a retry would duplicate later.
(A message already in flight when the connection drops may have been written; its retry
is then a duplicate, which consumers drop by the `event_id` header.)
confluent-kafka's errors are translated to `PublishError` here and never raised.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from outbox.errors import PublishError
from outbox.event import EVENT_ID_HEADER, ClaimedEvent
from outbox.publisher import PublishResult, never

log = logging.getLogger(__name__)

# How long the producer serves callbacks per call while a batch is in flight: short, so
# a cancellation is noticed quickly.
_POLL_SLICE = 0.05


def _error(err: KafkaError) -> PublishError:
    return PublishError(str(err.str()), code=str(err.name()), retriable=bool(err.retriable()))


class _Batch:
    """Collects the delivery reports of one `publish` call."""

    def __init__(self, events: Sequence[ClaimedEvent], clock: Callable[[], float]) -> None:
        self.events = events
        self.results: list[PublishResult | None] = [None] * len(events)
        self.outstanding = 0
        self._clock = clock

    def on_delivery(self, index: int, err: KafkaError | None, _msg: Message) -> None:
        if self.results[index] is not None:
            return
        event_id = self.events[index].id
        if err is None:
            self.results[index] = PublishResult(id=event_id, delivered_at=self._clock())
        else:
            self.results[index] = PublishResult(id=event_id, error=_error(err))
        self.outstanding -= 1

    def fail(self, index: int, error: PublishError) -> None:
        self.results[index] = PublishResult(id=self.events[index].id, error=error)


class KafkaPublisher:
    """Publishes claimed events with key = row key and headers = row headers + event_id."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "outbox-relay",
        delivery_timeout: float = 10.0,
        linger_ms: float = 5.0,
        stats_callback: Callable[[str], None] | None = None,
        stats_interval: float = 15.0,
        extra_config: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delivery_timeout = delivery_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            # Idempotence keeps per-partition order and drops duplicates across the
            # producer's own retries; it implies acks=all, said here for the reader.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.num.messages": 10_000,
            "message.timeout.ms": int(delivery_timeout * 1000),
            # Recover within a second or so of the broker coming back (default up to 10 s).
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "error_cb": self._on_error,
            # librdkafka's own log lines, under a logger operators can turn down.
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
        if stats_callback is not None:
            self._config["stats_cb"] = stats_callback
            self._config["statistics.interval.ms"] = int(stats_interval * 1000)
        self._config.update(extra_config or {})
        # Set once the producer hit a fatal error (e.g. the broker forgot our producer id):
        # it is useless from then on and is replaced before the next batch.
        self._fatal: PublishError | None = None
        self._producer = Producer(self._config)

    def publish(
        self, events: Sequence[ClaimedEvent], *, cancelled: Callable[[], bool] = never
    ) -> list[PublishResult]:
        if self._fatal is not None:
            self._renew_producer()
        batch = _Batch(events, self._clock)
        blocked: dict[tuple[str, str], PublishError] = {}
        for index, event in enumerate(events):
            earlier = blocked.get((event.topic, event.key))
            if earlier is not None:
                # Sending a key's later event after its earlier one was refused would
                # reorder the key; hold the later one back too.
                batch.fail(
                    index,
                    PublishError(f"earlier event refused ({earlier.code})", code="_KEY_HELD_BACK"),
                )
                continue
            error = self._fatal or self._produce(batch, index, event, cancelled)
            if error is not None:
                batch.fail(index, error)
                blocked[(event.topic, event.key)] = error
        self._await_reports(batch, cancelled)
        missing = self._fatal or PublishError(
            "no delivery report in time", code="_DELIVERY_UNKNOWN"
        )
        return [
            result if result is not None else PublishResult(id=batch.events[i].id, error=missing)
            for i, result in enumerate(batch.results)
        ]

    def idle(self) -> None:
        # librdkafka runs stats_cb and error_cb only from poll(); without this, an idle
        # relay would report producer statistics (broker round trip, queue) never.
        self._serve(0, flush=False)

    def close(self, timeout: float = 2.0) -> None:
        try:
            remaining = self._producer.flush(timeout)
        except KafkaException:
            remaining = len(self._producer)
        if remaining:
            log.warning(
                "producer closed with undelivered messages",
                extra={"event.action": "outbox_producer_closed", "count": remaining},
            )

    def _produce(
        self, batch: _Batch, index: int, event: ClaimedEvent, cancelled: Callable[[], bool]
    ) -> PublishError | None:
        headers: list[tuple[str, str | bytes | None]] = [
            *event.headers.items(),
            (EVENT_ID_HEADER, str(event.event_id)),
        ]
        deadline = self._monotonic() + self.delivery_timeout
        while True:
            try:
                self._producer.produce(
                    event.topic,
                    value=event.payload,
                    key=event.key,
                    headers=headers,
                    on_delivery=partial(batch.on_delivery, index),
                )
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                if cancelled() or self._monotonic() >= deadline:
                    return PublishError("producer queue full", code="_QUEUE_FULL")
                self._serve(_POLL_SLICE, flush=False)
                if self._fatal is not None:
                    return self._fatal
                continue
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal():
                    self._producer_failed(err)
                return _error(err)
            batch.outstanding += 1
            return None

    def _await_reports(self, batch: _Batch, cancelled: Callable[[], bool]) -> None:
        # librdkafka reports every message within message.timeout.ms; the margin covers
        # the report's own trip through the queue.
        deadline = self._monotonic() + self.delivery_timeout + 2.0
        while (
            batch.outstanding > 0
            and self._fatal is None
            and not cancelled()
            and self._monotonic() < deadline
        ):
            self._serve(_POLL_SLICE, flush=True)
        if batch.outstanding > 0 and self._fatal is None:
            # Stopping (or librdkafka overran its own timeout): drop what was not sent yet,
            # which reports it as purged, and wait briefly for what is in flight.
            with contextlib.suppress(KafkaException):
                self._producer.purge(in_queue=True, in_flight=False)
            self._serve(1.0, flush=True)

    def _serve(self, timeout: float, *, flush: bool) -> None:
        """Serve callbacks; confluent-kafka raises a fatal producer error from here."""
        try:
            if flush:
                self._producer.flush(timeout)
            else:
                self._producer.poll(timeout)
        except KafkaException as exc:
            self._producer_failed(exc.args[0])

    def _producer_failed(self, err: KafkaError) -> None:
        if self._fatal is None:
            log.error(
                "kafka producer failed; it will be replaced",
                extra={
                    "event.action": "outbox_producer_failed",
                    "error.code": str(err.name()),
                    "error.message": str(err.str()),
                },
            )
        self._fatal = PublishError(str(err.str()), code=str(err.name()), retriable=True)

    def _renew_producer(self) -> None:
        # The failed producer's queue is dropped: the relay has already released those
        # rows, and a late delivery from it would be a duplicate.
        with contextlib.suppress(KafkaException):
            self._producer.purge()
        self._producer = Producer(self._config)
        self._fatal = None
        log.warning(
            "kafka producer replaced after a fatal error",
            extra={"event.action": "outbox_producer_renewed"},
        )

    def _on_error(self, err: KafkaError) -> None:
        # Called from poll/flush. While a broker is down, transport errors repeat at every
        # reconnect and librdkafka's own log already says so: those go to debug. "All
        # brokers down" comes once per outage and stays a warning.
        if err.fatal():
            self._producer_failed(err)
            return
        level = logging.DEBUG if err.code() == KafkaError._TRANSPORT else logging.WARNING
        log.log(
            level,
            "kafka producer error",
            extra={
                "event.action": "outbox_producer_error",
                "error.code": str(err.name()),
                "error.message": str(err.str()),
            },
        )
