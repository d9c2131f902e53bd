"""Composition roots: each process's objects are built here, once, and wired together.

No DI container: constructors and closures. The retry engine (`retry/`) and the outbox
(`outbox/`) get what they need as arguments; this module is where the reservation
domain meets them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry.batch import BatchProcessor, sweep_processed
from retry.batch_model import Delivery, Outcome
from retry.breaker import CircuitBreaker
from retry.breaker_machine import BreakerConfig as EngineBreakerConfig
from retry.classify import Classifier
from retry.clock import SystemClock
from retry.policy import PolicyTable
from retry.store import RetryStore
from services.common.kafka import preflight
from services.reservation.api import create_api
from services.reservation.consumer import build_app, register_agent
from services.reservation.handler import ReservationHandler, settle_cancelled_row
from services.reservation.lag import LagMonitor
from services.reservation.metrics import ConsumerMetrics, OrderOutcomeMetrics, WarehouseMetrics
from services.reservation.settings import (
    ApiSettings,
    BreakerConfig,
    ConsumerSettings,
    RetryConfig,
    SchedulerSettings,
    WarehouseClientConfig,
)
from services.reservation.warehouse import WarehouseClient

log = logging.getLogger(__name__)


def async_engine(database_url: str, pool_size: int) -> AsyncEngine:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    # No pre-ping: it would cost a round trip per checkout; a dropped connection fails
    # its statement once and the caller's retry gets a fresh one.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)


def serve_metrics(registry: CollectorRegistry, host: str, port: int | None, process: str) -> None:
    if port is None:
        return
    server, _ = start_http_server(port, addr=host, registry=registry)
    log.info(
        "metrics endpoint up",
        extra={
            "event.action": "metrics_serving",
            "url.full": f"http://{host}:{server.server_port}/metrics",
            "labels.process": process,
        },
    )


def breaker(
    engine: AsyncEngine, config: BreakerConfig, registry: CollectorRegistry, instance: str
) -> CircuitBreaker:
    return CircuitBreaker(
        engine,
        EngineBreakerConfig(
            window_seconds=config.window_seconds,
            min_calls=config.min_calls,
            failure_rate_threshold=config.failure_rate_threshold,
            open_seconds=config.open_seconds,
            half_open_permits=config.half_open_permits,
            sync_interval_seconds=config.sync_interval_seconds,
        ),
        name=config.name,
        clock=SystemClock(),
        registry=registry,
        instance_id=instance,
    )


def policies(config: RetryConfig) -> PolicyTable:
    if config.policy == "logarithmic":
        default: dict[str, Any] = {"base_delay": config.base_delay_seconds}
    elif config.policy == "exponential":
        default = {"base_delay": config.base_delay_seconds}
    else:
        default = {"delay": config.base_delay_seconds}
    if config.policy != "fixed":
        default["max_delay"] = config.max_delay_seconds
    default.update(kind=config.policy, jitter=config.jitter, max_attempts=config.max_attempts)
    return PolicyTable.from_config(default, config.by_error_class)


def classifier(config: RetryConfig) -> Classifier:
    return Classifier.from_mapping(
        config.classification, unexpected_max_attempts=config.unexpected_max_attempts
    )


def psycopg_pool(database_url: str, size: int, *, name: str) -> AsyncConnectionPool[Any]:
    """An (unopened) psycopg pool for the hot path: autocommit, no per-checkout ping.

    A connection the server dropped fails its statement, which the callers retry (the
    consumer in place, the scheduler on its next pass); pinging every checkout would
    cost one round trip per statement to save that rare retry.
    """
    # The batch statements carry JSON per message (journey details, headers): orjson
    # dumps it several times faster than the standard library psycopg uses by default.
    set_json_dumps(orjson.dumps)
    url = make_url(database_url).set(drivername="postgresql")
    return AsyncConnectionPool(
        url.render_as_string(hide_password=False),
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        name=name,
        open=False,
    )


@dataclass
class Processing:
    """What the consumer and the scheduler share: the handler wired into the batch engine."""

    engine: BatchProcessor
    breaker: CircuitBreaker
    store: RetryStore
    pool: AsyncConnectionPool[Any]

    async def process(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return await self.engine.process(deliveries)

    async def breaker_state(self) -> str:
        return await self.breaker.state()


@dataclass(frozen=True)
class ProcessingMetrics:
    outcomes: OrderOutcomeMetrics
    warehouse: WarehouseMetrics

    @classmethod
    def on(cls, registry: CollectorRegistry) -> ProcessingMetrics:
        return cls(OrderOutcomeMetrics(registry), WarehouseMetrics(registry))


@asynccontextmanager
async def processing(
    *,
    database_url: str,
    pool_size: int,
    warehouse: WarehouseClientConfig,
    breaker_config: BreakerConfig,
    retry_config: RetryConfig,
    registry: CollectorRegistry,
    metrics: ProcessingMetrics,
    instance: str,
) -> AsyncIterator[Processing]:
    # SQLAlchemy for the breaker's and the store's occasional statements; psycopg's pool
    # for the engine's per-batch ones.
    engine = async_engine(database_url, 2)
    pool = psycopg_pool(database_url, pool_size, name=instance)
    client = WarehouseClient.create(warehouse, metrics.warehouse)
    shared_breaker = breaker(engine, breaker_config, registry, instance)
    processor = BatchProcessor(
        pool,
        ReservationHandler(client, metrics.outcomes),
        classifier(retry_config),
        policies(retry_config),
        shared_breaker,
        rng=random.Random(),
        registry=registry,
        owner=instance,
    )
    try:
        await pool.open(wait=False)
        async with shared_breaker:
            yield Processing(processor, shared_breaker, RetryStore(engine), pool)
    finally:
        await client.aclose()
        await pool.close()
        await engine.dispose()


def run_api(settings: ApiSettings) -> None:
    from retry.admin import make_admin_router

    registry = CollectorRegistry()
    engine = async_engine(settings.database_url.get_secret_value(), settings.db_pool_size)
    assert settings.admin_token is not None  # guaranteed by AdminAuth
    admin = make_admin_router(
        RetryStore(engine),
        token=settings.admin_token.get_secret_value(),
        breaker=breaker(engine, settings.breaker, registry, "api"),
        on_cancel=settle_cancelled_row,
    )
    pool = psycopg_pool(settings.database_url.get_secret_value(), settings.db_pool_size, name="api")

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        # Opened inside uvicorn's loop; without waiting, so the API starts (and answers
        # 503) while PostgreSQL is still down.
        await pool.open(wait=False)
        try:
            yield
        finally:
            await pool.close()
            await engine.dispose()

    app = create_api(
        engine=engine,
        writer=pool.connection,
        registry=registry,
        topic=settings.kafka.topic,
        max_body_bytes=settings.max_body_bytes,
        admin_router=admin,
        lifespan=lifespan,
    )
    serve_metrics(registry, settings.host, settings.metrics_port, "api")
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False
    )
    if settings.reuse_port:
        uvicorn.Server(config).run(sockets=[shared_socket(settings.host, settings.port)])
    else:
        uvicorn.Server(config).run()


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket other processes may bind too (SO_REUSEPORT, Linux and BSDs).

    uvicorn's own `--workers` forks from one import of the app, so its replicas could not
    be supervised (or killed) one by one; processes sharing a port can.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run_consumer(settings: ConsumerSettings) -> None:
    # faust's client retries a refused login forever: check the cluster once, clearly.
    preflight(settings.kafka_bootstrap_servers, settings.kafka_security)
    registry = CollectorRegistry()
    serve_metrics(registry, settings.host, settings.metrics_port, "consumer")
    metrics = ProcessingMetrics.on(registry)
    consumer_metrics = ConsumerMetrics(registry)
    app = build_app(settings)
    instance = settings.instance_id or "consumer"

    def runtime() -> object:
        return processing(
            database_url=settings.database_url.get_secret_value(),
            pool_size=settings.db_pool_size,
            warehouse=settings.warehouse,
            breaker_config=settings.breaker,
            retry_config=settings.retry,
            registry=registry,
            metrics=metrics,
            instance=instance,
        )

    register_agent(app, settings, runtime, consumer_metrics)  # type: ignore[arg-type]
    lag = LagMonitor(
        settings.kafka_bootstrap_servers,
        settings.kafka.consumer_group,
        settings.kafka.topic,
        consumer_metrics,
        client_config=settings.kafka_security.librdkafka(),
    )
    lag.start()
    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        lag.stop()


def run_scheduler(settings: SchedulerSettings) -> None:
    from retry.scheduler import Redriver, build_scheduler
    from retry.shared_limit import SharedTokenBucket

    registry = CollectorRegistry()
    serve_metrics(registry, settings.host, settings.metrics_port, "scheduler")
    metrics = ProcessingMetrics.on(registry)
    instance = settings.instance_id or "scheduler"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with processing(
            database_url=settings.database_url.get_secret_value(),
            pool_size=settings.db_pool_size,
            warehouse=settings.warehouse,
            breaker_config=settings.breaker,
            retry_config=settings.retry,
            registry=registry,
            metrics=metrics,
            instance=instance,
        ) as shared:
            redriver = Redriver(
                shared.store,
                shared.engine,
                SharedTokenBucket(
                    shared.pool,
                    f"redrive:{shared.engine.handler_name}",
                    settings.redrive_rate_per_second,
                    settings.redrive_burst,
                ),
                shared.breaker_state,
                batch_size=settings.batch_size,
                lease_seconds=settings.lease_seconds,
                owner=instance,
                registry=registry,
            )
            retention = settings.processed_retention_hours * 3600

            async def housekeeping() -> int:
                return await sweep_processed(shared.pool, retention)

            scheduler = build_scheduler(
                redriver,
                interval_seconds=settings.interval_seconds,
                cron=settings.cron,
                housekeeping=housekeeping,
            )
            scheduler.start()
            log.info("scheduler started", extra={"event.action": "scheduler_started"})
            await stop.wait()
            scheduler.shutdown(wait=False)
            log.info("scheduler stopped", extra={"event.action": "scheduler_stopped"})

    asyncio.run(main())
