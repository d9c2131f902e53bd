"""Console entry points, one per process. Each builds its Settings once and hands off."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TypeVar

import click
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.common.logs import configure_logging
from services.common.tracing import setup_tracing


@click.command()
def api() -> None:
    """Run the reservation REST API (uvicorn)."""
    from services.reservation.app import run_api
    from services.reservation.settings import ApiSettings

    settings = _settings(ApiSettings)
    _setup("reservation-api", settings.log_level)
    run_api(settings)


@click.command()
def relay() -> None:
    """Run the outbox relay: outbox rows → Kafka."""
    from services.reservation.relay_process import run_relay
    from services.reservation.settings import RelaySettings

    settings = _settings(RelaySettings)
    _setup("outbox-relay", settings.log_level)
    with _kafka_errors():
        run_relay(settings)


@click.command()
def consumer() -> None:
    """Run the Kafka consumer that reserves stock (faust worker)."""
    from services.reservation.app import run_consumer
    from services.reservation.settings import ConsumerSettings

    settings = _settings(ConsumerSettings)
    _setup("reservation-consumer", settings.log_level, ORDER_KEY)
    with _kafka_errors():
        run_consumer(settings)


@click.command()
def scheduler() -> None:
    """Run the retry scheduler that re-drives parked messages."""
    from services.reservation.app import run_scheduler
    from services.reservation.settings import SchedulerSettings

    settings = _settings(SchedulerSettings)
    _setup("retry-scheduler", settings.log_level, ORDER_KEY)
    run_scheduler(settings)


@click.command()
@click.option("--database-url", envvar="STEADFAST_DATABASE_URL", required=True)
def migrate(database_url: str) -> None:
    """Apply the Alembic migrations (idempotent)."""
    import migrations

    configure_logging("migrate")
    migrations.upgrade(database_url)


# The order topic is keyed by order id, so the retry engine's message key is the order id.
ORDER_KEY = {"labels.message_key": "labels.order_id"}


S = TypeVar("S", bound=BaseSettings)


@contextlib.contextmanager
def _kafka_errors() -> Iterator[None]:
    """A cluster that is unreachable or refuses us at start-up: one clear line, exit 1."""
    from services.common.kafka import KafkaUnavailable

    try:
        yield
    except KafkaUnavailable as exc:
        logging.getLogger("steadfast").error(
            "cannot start: %s", exc, extra={"event.action": "kafka_unavailable"}
        )
        raise click.ClickException(str(exc)) from None


def _settings(cls: type[S]) -> S:
    """Build the settings, or exit non-zero with what is wrong (no traceback)."""
    try:
        return cls()
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc


def _setup(service: str, level: str, aliases: dict[str, str] | None = None) -> None:
    configure_logging(service, level, aliases)
    setup_tracing(service)
