"""The outbox relay process's composition root: settings in, a running `outbox.Relay` out.

Builds the engine, metrics registry and endpoint, the Kafka publisher (with librdkafka
statistics turned into gauges), the LISTEN waker and the relay, then runs the relay in
this thread until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import FrameType

from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from outbox.event import ClaimedEvent
from outbox.kafka import KafkaPublisher
from outbox.listener import PgListener
from outbox.metrics import OutboxMetrics, ProducerStatsMetrics
from outbox.publisher import PublishResult
from outbox.relay import Relay
from outbox.store import OutboxStore
from services.common import tracing
from services.common.kafka import preflight
from services.reservation.settings import RelaySettings

log = logging.getLogger(__name__)

# librdkafka reports every message within this. A lease must outlast the batch ahead's
# delivery, a backoff, and its own delivery, or a slow batch could be claimed (and
# published) twice by another relay: hence at most a quarter of the lease.
DELIVERY_TIMEOUT_SECONDS = 10.0


def publish_spans(
    events: Sequence[ClaimedEvent], results: Sequence[PublishResult], started: float
) -> None:
    """A producer span per event, in the trace of the request that wrote it, from the
    batch's start to the broker's acknowledgement of that event."""
    reports = {r.id: r for r in results}
    for event in events:
        report = reports.get(event.id)
        if report is None:
            continue
        tracing.record_span(
            f"{event.topic} publish",
            parent=event.headers.get("traceparent"),
            start=started,
            end=report.delivered_at or time.time(),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": event.topic,
                "messaging.kafka.message.key": event.key,
                "steadfast.outbox_id": event.id,
            },
            error=str(report.error) if report.error is not None else None,
        )


def relay_owner(instance_id: str | None) -> str:
    """A lease owner unique per process, readable in `outbox.locked_by`."""
    base = instance_id or socket.gethostname()
    return f"{base}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_relay(settings: RelaySettings) -> None:
    """Run one relay until SIGTERM/SIGINT; returns after a clean shutdown."""
    preflight(settings.kafka_bootstrap_servers, settings.kafka_security)
    url = make_url(settings.database_url.get_secret_value()).set(drivername="postgresql+psycopg")
    engine = create_engine(url, pool_size=settings.db_pool_size, max_overflow=0, pool_pre_ping=True)
    registry = CollectorRegistry()
    metrics = OutboxMetrics(registry)
    producer_metrics = ProducerStatsMetrics(registry)
    owner = relay_owner(settings.instance_id)
    delivery_timeout = min(DELIVERY_TIMEOUT_SECONDS, settings.lease_seconds / 4)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        client_id=f"outbox-relay-{owner}",
        delivery_timeout=delivery_timeout,
        stats_callback=producer_metrics.observe,
        stats_interval=settings.producer_stats_interval_seconds,
        extra_config=settings.kafka_security.librdkafka(),
    )
    listener = PgListener.from_engine(engine)
    relay = Relay(
        store=OutboxStore(engine),
        publisher=publisher,
        owner=owner,
        metrics=metrics,
        wakeup=listener,
        batch_size=settings.batch_size,
        max_batch_size=settings.max_batch_size,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval_seconds,
        retention=timedelta(hours=settings.retention_hours),
        observer=publish_spans if tracing.exporting() else None,
    )
    server = None
    if settings.metrics_port is not None:
        server, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        log.info(
            "metrics endpoint up",
            extra={
                "event.action": "metrics_listening",
                "url.port": server.server_port,
                "url.full": f"http://{settings.host}:{server.server_port}/metrics",
            },
        )
    restore = _install_signal_handlers(relay)
    try:
        relay.run()
    finally:
        restore()
        publisher.close()
        listener.close()
        engine.dispose()
        if server is not None:
            server.shutdown()
            server.server_close()


def _install_signal_handlers(relay: Relay) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        # Signals reach the main thread only; an embedding caller stops the relay itself.
        return lambda: None

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "stopping on signal",
            extra={"event.action": "outbox_relay_stopping", "signal": signal.Signals(signum).name},
        )
        relay.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
