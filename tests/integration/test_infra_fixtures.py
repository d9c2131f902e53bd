"""The fixtures themselves: fresh databases are migrated and isolated, topics exist."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from alembic.script import ScriptDirectory
from confluent_kafka.admin import AdminClient

import migrations
from local.infra import libpq_url


def test_each_database_is_migrated_and_private(make_database: Callable[[], str]) -> None:
    first, second = make_database(), make_database()
    assert first != second
    with psycopg.connect(libpq_url(first)) as conn:
        conn.execute(
            "INSERT INTO processed_events (event_id, handler, outcome) VALUES ('e1', 'h', 'ok')"
        )
    with psycopg.connect(libpq_url(second)) as conn:
        count = conn.execute("SELECT count(*) FROM processed_events").fetchone()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert count == (0,)
    head = ScriptDirectory.from_config(migrations.alembic_config(first)).get_current_head()
    assert version is not None and version[0] == head


def test_topic_factory_creates_partitions(
    topic_factory: Callable[..., str], kafka_bootstrap: str
) -> None:
    name = topic_factory("fixture", partitions=4)
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.topics[name].partitions) == 4
