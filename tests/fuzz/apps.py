"""The two HTTP services wired as their entry points wire them, for fuzz and security tests.

The reservation API gets the retry admin router and the real shared breaker; the
warehouse mock runs with faults off. Calls go in-process: schemathesis's ASGI transport
shares one event loop thread, and the hypothesis tests start a loop per example, so the
engine uses NullPool: no pooled connection outlives the loop that opened it.
"""

from __future__ import annotations

import random

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from local.infra import sqlalchemy_url
from retry.admin import make_admin_router
from retry.breaker import CircuitBreaker
from retry.store import RetryStore
from services.reservation.api import create_api
from services.reservation.handler import settle_cancelled_row
from services.reservation.placing import direct_writer
from services.warehouse_mock.app import create_app
from services.warehouse_mock.settings import WarehouseMockSettings

TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_BYTES = 64 * 1024


def reservation_api(engine: AsyncEngine) -> FastAPI:
    """Wired like `services.reservation.app.run_api`."""
    admin = make_admin_router(
        RetryStore(engine),
        token=TOKEN,
        breaker=CircuitBreaker(engine, name="warehouse", instance_id="fuzz"),
        on_cancel=settle_cancelled_row,
    )
    return create_api(
        engine=engine,
        writer=direct_writer(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        ),
        registry=CollectorRegistry(),
        topic="orders",
        max_body_bytes=MAX_BODY_BYTES,
        admin_router=admin,
    )


def reservation_api_for_docs() -> FastAPI:
    # Creating an engine opens no connection; this app only serves /openapi.json.
    return reservation_api(create_async_engine("postgresql+psycopg://docs-only/none"))


def warehouse_mock(*, max_body_bytes: int = 4096) -> FastAPI:
    settings = WarehouseMockSettings(
        admin_token=SecretStr(TOKEN),
        warehouse_stock={"SKU-A": 5, "SKU-B": 1},
        warehouse_max_body_bytes=max_body_bytes,
    )
    return create_app(settings, rng=random.Random(0))


def reservation_app_on(database_url: str) -> FastAPI:
    # NullPool holds no connections, so there is nothing to dispose afterwards.
    return reservation_api(create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool))
