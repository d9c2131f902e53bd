"""A real pipeline for consumer tests: API (in-process), relay, consumer and warehouse
mock (real processes), on the session broker and a fresh database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from local.infra import sqlalchemy_url
from retry.admin import make_admin_router
from retry.breaker import CircuitBreaker
from retry.store import RetryStore
from services.reservation.api import create_api
from services.reservation.app import psycopg_pool
from services.reservation.handler import settle_cancelled_row
from services.reservation.lag import LagMonitor
from services.reservation.metrics import ConsumerMetrics
from tests.integration.retry_engine.engine_support import rig  # noqa: F401 (a fixture)
from tests.processes import TOKEN, Proc, admin_headers, base_env, start, start_warehouse


@dataclass
class Pipeline:
    database_url: str
    bootstrap: str
    topic: str
    group: str
    warehouse: Proc
    log_dir: Path
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, script: str, **extra: str) -> Proc:
        proc = start(name, script, {**self.env, **extra}, self.log_dir)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.warehouse.stop()

    def warehouse_stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.warehouse.urls['base']}/admin/stats", headers=admin_headers())
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def set_faults(self, faults: dict[str, Any]) -> None:
        response = httpx.put(
            f"{self.warehouse.urls['base']}/admin/faults", json=faults, headers=admin_headers()
        )
        assert response.status_code == 200, response.text

    def lag(self) -> dict[int, int]:
        monitor = LagMonitor(
            self.bootstrap, self.group, self.topic, ConsumerMetrics(CollectorRegistry())
        )
        try:
            return monitor.measure()
        finally:
            monitor.close()


@pytest.fixture
def pipeline(
    database_url: str, private_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> Iterator[Pipeline]:
    kafka_bootstrap = private_bootstrap
    topic = topic_factory("orders", partitions=3, bootstrap=kafka_bootstrap)
    warehouse = start_warehouse(tmp_path)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = base_env(
        {
            "STEADFAST_DATABASE_URL": database_url,
            "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STEADFAST_KAFKA__TOPIC": topic,
            "STEADFAST_KAFKA__PARTITIONS": "3",
            "STEADFAST_KAFKA__CONSUMER_GROUP": group,
            "STEADFAST_WAREHOUSE__BASE_URL": warehouse.urls["base"],
            "STEADFAST_POLL_INTERVAL_SECONDS": "0.5",
        }
    )
    pipe = Pipeline(database_url, kafka_bootstrap, topic, group, warehouse, tmp_path, env)
    try:
        yield pipe
    finally:
        pipe.stop_all()


@pytest.fixture
async def api_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def api(
    pipeline: Pipeline, api_engine: AsyncEngine, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    pool = psycopg_pool(database_url, 10, name="test-api")  # as run_api builds it
    await pool.open()
    admin = make_admin_router(
        RetryStore(api_engine),
        token=TOKEN,
        breaker=CircuitBreaker(api_engine, name="warehouse", instance_id="test-api"),
        on_cancel=settle_cancelled_row,
    )
    app = create_api(
        engine=api_engine,
        writer=pool.connection,
        registry=CollectorRegistry(),
        topic=pipeline.topic,
        max_body_bytes=64 * 1024,
        admin_router=admin,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client
    await pool.close()


async def statuses(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT status, count(*) FROM orders GROUP BY status"))
        return {status: int(count) for status, count in rows.tuples()}
