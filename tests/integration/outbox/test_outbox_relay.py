"""The relay end to end: PostgreSQL outbox → relay thread → real broker → a reader."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest
from outbox_support import (
    RunningRelay,
    TopicReader,
    assert_once_and_in_order,
    events_for,
    insert_events,
    make_event,
    unpublished,
    wait_until,
)
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.store import OutboxStore, add_events, add_events_sync

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _is_published(engine: Engine, event_id: object) -> bool:
    return _published_at(engine, event_id) is not None


def _published_at(engine: Engine, event_id: object) -> object:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT published_at FROM outbox WHERE event_id = :e"), {"e": event_id}
        ).scalar_one()


async def test_committed_events_are_published_once_in_order_with_headers(
    async_engine: AsyncEngine,
    engine: Engine,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
) -> None:
    topic = topic_factory("outbox-a", partitions=3)
    events = [
        make_event(topic, f"k{k}", seq, traceparent=TRACEPARENT)
        for seq in range(10)
        for k in range(5)
    ]
    for chunk in range(0, len(events), 7):  # several transactions, several keys each
        async with async_engine.begin() as conn:
            await add_events(conn, events[chunk : chunk + 7])
    relay = relay_factory(batch_size=16)

    records = reader_factory(kafka_bootstrap, topic).read(len(events))

    assert_once_and_in_order(records, events)
    by_id = {str(e.event_id): e for e in events}
    for record in records:
        event = by_id[record.event_id]
        assert record.key == event.key
        assert record.payload == event.payload
        assert record.headers == {**event.headers, "event_id": str(event.event_id)}
        assert record.headers["traceparent"] == TRACEPARENT
    wait_until(lambda: unpublished(engine) == 0, 10, "rows marked published")
    assert relay.published() == len(events)
    assert relay.errors() == 0
    batch_count = relay.metric("steadfast_outbox_batch_size_count")
    assert 4 <= batch_count <= len(events)


async def test_a_rolled_back_transaction_publishes_nothing(
    async_engine: AsyncEngine,
    engine: Engine,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
) -> None:
    topic = topic_factory("outbox-b", partitions=1)
    ghost, marker = make_event(topic, "k", 0), make_event(topic, "k", 1)
    relay_factory()
    async with async_engine.connect() as conn:
        await conn.begin()
        await add_events(conn, [ghost])
        await conn.rollback()
    insert_events(engine, [marker])

    # One partition: the ghost would be read before the marker if it had been sent.
    records = reader_factory(kafka_bootstrap, topic).read(1)

    assert [r.event_id for r in records] == [str(marker.event_id)]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 1


def test_a_transaction_that_commits_out_of_id_order_is_not_skipped(
    engine: Engine,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
) -> None:
    topic = topic_factory("outbox-e", partitions=2)
    late, early = make_event(topic, "a", 0), make_event(topic, "b", 0)
    relay_factory(poll_interval=0.2)
    with engine.connect() as tx_a:
        tx_a.begin()
        add_events_sync(tx_a, [late])  # takes the lower id ...
        insert_events(engine, [early])  # ... tx B takes a higher one and commits first
        wait_until(lambda: _published_at(engine, early.event_id) is not None, 15, "B published")
        tx_a.commit()  # ... then A commits, behind B
    wait_until(lambda: _published_at(engine, late.event_id) is not None, 15, "A published")

    with engine.connect() as conn:
        ids: dict[object, int] = dict(
            conn.execute(text("SELECT event_id, id FROM outbox")).tuples().all()
        )
    assert ids[late.event_id] < ids[early.event_id]
    records = reader_factory(kafka_bootstrap, topic).read(2)
    assert sorted(r.event_id for r in records) == sorted([str(late.event_id), str(early.event_id)])


def test_notify_wakes_the_relay_long_before_its_poll_interval(
    engine: Engine, topic_factory: Callable[..., str], relay_factory: Callable[..., RunningRelay]
) -> None:
    topic = topic_factory("outbox-f", partitions=1)
    relay_factory(poll_interval=30, stats_interval=60)

    def listening() -> bool:
        # The relay LISTENs only once its first (empty) round is done and it waits.
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                        " AND state = 'idle'"
                    )
                ).scalar_one()
            )

    wait_until(listening, 10, "the relay to LISTEN")
    for attempt in range(3):  # three wake-ups in a row, each well under the 30 s poll
        event = make_event(topic, "k", attempt)
        insert_events(engine, [event])
        committed = time.monotonic()
        wait_until(partial(_is_published, engine, event.event_id), 10, "publication")
        assert time.monotonic() - committed < 2.0


def test_a_lease_held_by_a_dead_relay_expires_and_another_relay_publishes(
    engine: Engine,
    store: OutboxStore,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
) -> None:
    topic = topic_factory("outbox-h", partitions=1)
    events = events_for(topic, keys=2, per_key=3)
    insert_events(engine, events)
    dead = store.claim(2, "dead-relay", lease_seconds=2)  # k0/0 and k1/0, never settled
    assert len(dead) == 2
    relay = relay_factory(poll_interval=0.2)

    records = reader_factory(kafka_bootstrap, topic).read(len(events), timeout=30)

    # Nothing of k0/k1 could go before the dead lease expired; then all, in key order.
    assert_once_and_in_order(records, events)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT attempts, locked_by FROM outbox WHERE id = ANY(:ids)"),
            {"ids": [e.id for e in dead]},
        ).all()
    assert [(r.attempts, r.locked_by) for r in rows] == [(2, relay.relay.owner)] * 2
    assert store.mark_published([e.id for e in dead], "dead-relay") == 0


def test_the_relay_deletes_published_rows_past_retention(
    engine: Engine, topic_factory: Callable[..., str], relay_factory: Callable[..., RunningRelay]
) -> None:
    topic = topic_factory("outbox-g", partitions=1)
    insert_events(engine, [make_event(topic, f"k{i}", 0) for i in range(4)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - interval '2 hours'"
                " WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)"
            )
        )
    relay_factory(retention=timedelta(hours=1), cleanup_interval=0.2)

    # The two fresh rows get published; only the two old published rows go.
    def settled() -> bool:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*), count(published_at) FROM outbox")).one() == (
                2,
                2,
            )

    wait_until(settled, 15, "retention cleanup and publication")


def test_stop_ends_the_relay_within_a_couple_of_seconds(
    relay_factory: Callable[..., RunningRelay],
) -> None:
    relay = relay_factory(poll_interval=30, stats_interval=60)
    wait_until(lambda: relay.metric("steadfast_outbox_pending_rows") == 0, 5, "first round")
    assert relay.stop() < 2.0
