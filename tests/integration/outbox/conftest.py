"""Fixtures for the outbox's integration tests: engines, running relays, a topic reader.

Everything is real: PostgreSQL from `database_url`, the broker from `kafka_bootstrap`
(Apache Kafka, or noida-db with STEADFAST_TEST_BROKER=noida) or a private `broker_factory`
one.
Every wait is bounded by a deadline.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import pytest
from outbox_support import RunningRelay, TopicReader
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from local.infra import sqlalchemy_url
from outbox.backoff import Backoff
from outbox.kafka import KafkaPublisher
from outbox.listener import PgListener
from outbox.metrics import OutboxMetrics
from outbox.relay import Relay
from outbox.store import OutboxStore


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url), pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: Engine) -> OutboxStore:
    return OutboxStore(engine)


@pytest.fixture
def relay_factory(database_url: str, kafka_bootstrap: str) -> Iterator[Callable[..., RunningRelay]]:
    running: list[RunningRelay] = []

    def start(
        *,
        bootstrap: str | None = None,
        owner: str | None = None,
        batch_size: int = 200,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        delivery_timeout: float = 5.0,
        retention: timedelta | None = None,
        cleanup_interval: float = 60.0,
        stats_interval: float = 0.5,
        listen: bool = True,
        backoff: Backoff | None = None,
    ) -> RunningRelay:
        engine = create_engine(sqlalchemy_url(database_url), pool_size=2)
        registry = CollectorRegistry()
        owner = owner or f"relay-{len(running)}-{uuid.uuid4().hex[:4]}"
        publisher = KafkaPublisher(
            bootstrap or kafka_bootstrap, client_id=owner, delivery_timeout=delivery_timeout
        )
        listener = PgListener.from_engine(engine) if listen else None
        relay = Relay(
            store=OutboxStore(engine),
            publisher=publisher,
            owner=owner,
            metrics=OutboxMetrics(registry),
            wakeup=listener,
            batch_size=batch_size,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            retention=retention,
            cleanup_interval=cleanup_interval,
            stats_interval=stats_interval,
            backoff=backoff or Backoff(max_seconds=2.0, jitter_seconds=0.2),
        )
        thread = threading.Thread(target=relay.run, name=owner, daemon=True)
        handle = RunningRelay(relay, thread, registry, publisher, listener, engine)
        running.append(handle)
        thread.start()
        return handle

    yield start
    for handle in running:
        handle.relay.stop()
    for handle in running:
        handle.thread.join(15)
        handle.publisher.close(timeout=1)
        if handle.listener is not None:
            handle.listener.close()
        handle.engine.dispose()
    assert not [h.relay.owner for h in running if h.thread.is_alive()]


@pytest.fixture
def reader_factory() -> Iterator[Callable[[str, str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(bootstrap: str, topic: str) -> TopicReader:
        reader = TopicReader(bootstrap, topic)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
