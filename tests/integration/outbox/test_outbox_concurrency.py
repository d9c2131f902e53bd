"""Two relays on one outbox: every row exactly once, each key's events in order."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from outbox_support import (
    RunningRelay,
    TopicReader,
    assert_once_and_in_order,
    events_for,
    insert_events,
    unpublished,
    wait_until,
)
from sqlalchemy import Engine

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]


def test_two_relays_publish_2000_rows_once_each_in_key_order(
    engine: Engine,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
) -> None:
    topic = topic_factory("outbox-c", partitions=4)
    # 400 keys x 5 events, interleaved: every key recurs in later batches, so the relays
    # contend for the same keys all the time. (Not fewer keys: a relay holds up to two
    # batches of 50, and a key is only ever in flight at one relay, so with 100 keys the
    # first relay could rightly keep every key to itself.)
    events = events_for(topic, keys=400, per_key=5)
    half = len(events) // 2
    insert_events(engine, events[:half])
    relays = [relay_factory(batch_size=50, poll_interval=0.1) for _ in range(2)]
    # The second half arrives while both relays drain, in many small transactions.
    writer = threading.Thread(
        target=lambda: [
            insert_events(engine, events[i : i + 25]) for i in range(half, len(events), 25)
        ]
    )
    writer.start()
    writer.join(30)
    assert not writer.is_alive()

    records = reader_factory(kafka_bootstrap, topic).read(len(events), timeout=60, quiet=2.0)

    assert_once_and_in_order(records, events)
    wait_until(lambda: unpublished(engine) == 0, 10, "every row marked published")
    counts = [relay.published() for relay in relays]
    assert sum(counts) == len(events)
    assert all(count > 0 for count in counts), f"one relay did all the work: {counts}"
