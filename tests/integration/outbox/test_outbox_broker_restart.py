"""The broker goes away and comes back: the relay backs off, then publishes everything."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

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
from sqlalchemy import Engine, text

from local import infra

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]


def _stop_for_real(broker: infra.Broker) -> None:
    """Stop the broker and everything it spawned, and wait until its port is closed.

    `noida-db` on PATH is a Python wrapper that runs the real server as a child, and
    `Broker.stop()` signals only the wrapper: the child kept serving. The process group
    (the broker is started with start_new_session) holds both.
    """
    if broker.process is not None and broker.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(broker.process.pid, signal.SIGTERM)
        broker.process.wait(10)
    host, port = broker.bootstrap.rsplit(":", 1)
    wait_until(lambda: not infra.port_open(host, int(port)), 10, "the broker's port to close")


@pytest.fixture(params=["noida", "tansu"])
def private_broker(
    request: pytest.FixtureRequest, broker_factory: Callable[[str], infra.Broker]
) -> Iterator[infra.Broker]:
    broker = broker_factory(request.param)
    yield broker
    with contextlib.suppress(Exception):
        _stop_for_real(broker)


def test_rows_wait_out_a_broker_outage_and_are_published_once_in_order(
    engine: Engine,
    private_broker: infra.Broker,
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    broker = private_broker
    # noida-db keeps its data across the restart; Tansu keeps nothing (memory only), so
    # there only what was written during the outage can be read back. Four partitions:
    # the count both brokers give a topic they create on first use.
    persistent = broker.kind == "noida"
    topic = "outbox-d"
    infra.ensure_topics(broker.bootstrap, {topic: 4})
    before = events_for(topic, keys=10, per_key=3)
    during = events_for(topic, keys=10, per_key=5, first_seq=3)
    relay = relay_factory(bootstrap=broker.bootstrap, delivery_timeout=2.0, poll_interval=0.2)
    insert_events(engine, before)
    wait_until(lambda: unpublished(engine) == 0, 20, "the first rows published")

    _stop_for_real(broker)
    for i in range(0, len(during), 10):
        insert_events(engine, during[i : i + 10])
    # The relay tries, every delivery times out, the rows stay pending, it backs off.
    wait_until(lambda: relay.errors() >= len(during), 30, "failed deliveries")
    assert unpublished(engine) == len(during)
    assert relay.published() == len(before)
    with engine.connect() as conn:
        last_error = conn.execute(
            text("SELECT last_error FROM outbox WHERE last_error IS NOT NULL LIMIT 1")
        ).scalar_one()
    assert "_MSG_TIMED_OUT" in last_error, last_error
    backoffs = [
        r for r in caplog.records if r.__dict__.get("event.action") == "outbox_relay_backoff"
    ]
    assert backoffs and all(r.__dict__["cause"] == "broker" for r in backoffs)
    assert all(0 < r.__dict__["delay"] <= 2.0 for r in backoffs)  # capped (fixture: 2 s)

    broker.start()
    if not persistent:
        infra.ensure_topics(broker.bootstrap, {topic: 4})
    wait_until(lambda: unpublished(engine) == 0, 60, "the backlog published after restart")

    expected = before + during if persistent else during
    records = reader_factory(broker.bootstrap, topic).read(len(expected), timeout=30)
    assert_once_and_in_order(records, expected)
    assert relay.published() == len(before) + len(during)
