"""The broker goes away and comes back: the relay backs off, then publishes everything."""

from __future__ import annotations

import contextlib
import logging
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


def _stop_for_real(broker: infra.AnyBroker) -> None:
    """Stop the broker (every process of it) and wait until its port is closed."""
    broker.stop()
    addresses = [hp.rsplit(":", 1) for hp in broker.bootstrap.split(",")]
    wait_until(
        lambda: not any(infra.port_open(h, int(p)) for h, p in addresses),
        10,
        "the broker's ports to close",
    )


@pytest.fixture(params=["kafka", "noida"])
def private_broker(
    request: pytest.FixtureRequest, broker_factory: Callable[..., infra.AnyBroker]
) -> Iterator[infra.AnyBroker]:
    """Apache Kafka, and the PyPI stand-in kept for machines without Java: both persist."""
    broker = broker_factory(request.param)
    yield broker
    with contextlib.suppress(Exception):
        _stop_for_real(broker)


def test_rows_wait_out_a_broker_outage_and_are_published_once_in_order(
    engine: Engine,
    private_broker: infra.AnyBroker,
    relay_factory: Callable[..., RunningRelay],
    reader_factory: Callable[[str, str], TopicReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    broker = private_broker
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
    wait_until(lambda: unpublished(engine) == 0, 60, "the backlog published after restart")

    expected = before + during
    records = reader_factory(broker.bootstrap, topic).read(len(expected), timeout=30)
    assert_once_and_in_order(records, expected)
    assert relay.published() == len(before) + len(during)
