"""Helpers for the outbox's integration tests: events, bounded waits, a topic reader.

A uniquely named module (not conftest) so test files can import it; fixtures live in
conftest.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from outbox.kafka import KafkaPublisher
from outbox.listener import PgListener
from outbox.relay import Relay
from outbox.store import OutboxEvent, add_events_sync


def make_event(topic: str, key: str, seq: int, **headers: str) -> OutboxEvent:
    return OutboxEvent(
        event_id=uuid.uuid4(),
        aggregate_id=key,
        topic=topic,
        key=key,
        payload={"key": key, "seq": seq},
        headers={"event_type": "TestEvent", "schema_version": "1", **headers},
    )


def insert_events(engine: Engine, events: Iterable[OutboxEvent]) -> None:
    with engine.begin() as conn:
        add_events_sync(conn, list(events))


def events_for(topic: str, keys: int, per_key: int, first_seq: int = 0) -> list[OutboxEvent]:
    """per_key events for each of `keys` keys, interleaved the way real traffic is."""
    return [
        make_event(topic, f"k{k}", seq)
        for seq in range(first_seq, first_seq + per_key)
        for k in range(keys)
    ]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ).scalar_one()
        )


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: str
    payload: dict[str, Any]
    headers: dict[str, str]

    @property
    def event_id(self) -> str:
        return self.headers["event_id"]


def _headers(raw: Any) -> dict[str, str]:
    return {name: (value or b"").decode() for name, value in (raw or [])}


@dataclass
class TopicReader:
    """Reads a topic from the beginning by assignment (no group coordination)."""

    bootstrap: str
    topic: str
    records: list[Record] = field(default_factory=list)
    _consumer: Consumer | None = None

    def _open(self) -> Consumer:
        if self._consumer is None:
            consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"outbox-test-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                }
            )
            parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            self._consumer = consumer
        return self._consumer

    def read(self, expected: int, timeout: float = 30.0, quiet: float = 1.0) -> list[Record]:
        """Read until `expected` records arrived, then until `quiet` s pass with no more
        (so duplicates beyond `expected` are seen too). Fails after `timeout`."""
        consumer = self._open()
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while True:
            now = time.monotonic()
            if len(self.records) >= expected:
                quiet_until = quiet_until or now + quiet
                if now >= quiet_until:
                    return self.records
            elif now > deadline:
                raise AssertionError(
                    f"read {len(self.records)} of {expected} records from {self.topic} "
                    f"in {timeout}s"
                )
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            quiet_until = None if len(self.records) < expected else quiet_until
            key, value = msg.key(), msg.value()
            assert isinstance(key, bytes) and isinstance(value, bytes)
            self.records.append(
                Record(
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=key.decode(),
                    payload=json.loads(value),
                    headers=_headers(msg.headers()),
                )
            )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def assert_once_and_in_order(records: list[Record], events: list[OutboxEvent]) -> None:
    """Every event exactly once on the topic, and each key's events in the order written."""
    counts = Counter(r.event_id for r in records)
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert duplicates == {}, f"{len(duplicates)} events published more than once"
    assert set(counts) == {str(e.event_id) for e in events}
    per_key: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for r in records:
        per_key[r.key].append((r.partition, r.offset, r.payload["seq"]))
    written: dict[str, list[int]] = defaultdict(list)
    for e in events:
        written[e.key].append(e.payload["seq"])
    for key, seen in per_key.items():
        assert len({p for p, _, _ in seen}) == 1, f"key {key} spread over partitions"
        assert [seq for _, _, seq in sorted(seen)] == written[key], f"key {key} out of order"


@dataclass
class RunningRelay:
    relay: Relay
    thread: threading.Thread
    registry: CollectorRegistry
    publisher: KafkaPublisher
    listener: PgListener | None
    engine: Engine

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def published(self) -> float:
        return self.metric("steadfast_outbox_published_total")

    def errors(self) -> float:
        return sum(
            s.value
            for m in self.registry.collect()
            if m.name == "steadfast_outbox_publish_errors"
            for s in m.samples
            if s.name.endswith("_total")
        )

    def stop(self, timeout: float = 5.0) -> float:
        """Stop and join; return how long the loop took to end."""
        started = time.monotonic()
        self.relay.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"relay {self.relay.owner} did not stop"
        return time.monotonic() - started
