"""KafkaPublisher against a real broker: delivery reports decide, refusals hold a key
back, and a cancelled publish returns promptly even when the broker never answers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from local import infra
from outbox.event import ClaimedEvent
from outbox.kafka import KafkaPublisher

pytestmark = pytest.mark.kafka


def _claimed(id_: int, topic: str, key: str, size: int = 10) -> ClaimedEvent:
    return ClaimedEvent(
        id=id_,
        event_id=uuid.uuid4(),
        topic=topic,
        key=key,
        payload=b'"' + b"x" * size + b'"',
        headers={"event_type": "T"},
        created_at=datetime.now(UTC),
        attempts=1,
    )


def test_a_refused_event_holds_back_its_key_but_not_other_keys(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("outbox-pub", partitions=2)
    publisher = KafkaPublisher(
        kafka_bootstrap, delivery_timeout=10, extra_config={"message.max.bytes": 10_000}
    )
    events = [
        _claimed(1, topic, "a", size=20_000),  # refused by the producer itself
        _claimed(2, topic, "a"),
        _claimed(3, topic, "b"),
    ]
    try:
        started = time.time()
        results = publisher.publish(events)
    finally:
        publisher.close()

    assert [r.id for r in results] == [1, 2, 3]
    assert results[0].error is not None and results[0].error.code == "MSG_SIZE_TOO_LARGE"
    assert results[1].error is not None and results[1].error.code == "_KEY_HELD_BACK"
    assert results[2].ok
    assert results[2].delivered_at is not None and results[2].delivered_at >= started


def test_every_event_gets_a_report_when_the_broker_is_unreachable() -> None:
    publisher = KafkaPublisher(f"127.0.0.1:{infra.free_port()}", delivery_timeout=1.0)
    try:
        started = time.monotonic()
        results = publisher.publish([_claimed(i, "nowhere", f"k{i}") for i in range(5)])
        took = time.monotonic() - started
    finally:
        publisher.close(timeout=0.5)

    assert [r.ok for r in results] == [False] * 5
    assert {r.error.code for r in results if r.error} == {"_MSG_TIMED_OUT"}
    assert took < 4.0


def test_a_cancelled_publish_returns_promptly() -> None:
    publisher = KafkaPublisher(f"127.0.0.1:{infra.free_port()}", delivery_timeout=30.0)
    deadline = time.monotonic() + 0.3
    try:
        started = time.monotonic()
        results = publisher.publish(
            [_claimed(1, "nowhere", "k")], cancelled=lambda: time.monotonic() > deadline
        )
        took = time.monotonic() - started
    finally:
        publisher.close(timeout=0.5)

    assert not results[0].ok
    assert took < 2.0


def test_an_idle_publisher_still_reports_statistics(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("outbox-stats", partitions=1)
    documents: list[str] = []
    publisher = KafkaPublisher(kafka_bootstrap, stats_callback=documents.append, stats_interval=0.1)
    try:
        assert publisher.publish([_claimed(1, topic, "a")])[0].ok
        after_publish = len(documents)
        deadline = time.monotonic() + 5.0
        while len(documents) < after_publish + 3 and time.monotonic() < deadline:
            publisher.idle()
            time.sleep(0.05)
    finally:
        publisher.close()

    assert len(documents) >= after_publish + 3, "no statistics were served while idle"
    assert '"brokers"' in documents[-1]
