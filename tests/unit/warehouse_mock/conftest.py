"""Fixtures for the warehouse mock's unit tests: a fake clock, a recording sleep, an app.

Settings are built from keyword arguments; tests/conftest.py clears STEADFAST_* variables.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.warehouse_mock.app import create_app
from services.warehouse_mock.settings import WarehouseMockSettings

TOKEN = "test-admin-token"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers what was asked and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


def make_settings(**overrides: Any) -> WarehouseMockSettings:
    values: dict[str, Any] = {"admin_token": TOKEN, "warehouse_stock": {"SKU-A": 10, "SKU-B": 3}}
    values.update(overrides)
    return WarehouseMockSettings(**values)


@pytest.fixture
def app_factory(clock: FakeClock, sleeps: RecordingSleep) -> Callable[..., FastAPI]:
    def build(**overrides: Any) -> FastAPI:
        settings = make_settings(**overrides)
        return create_app(
            settings,
            clock=clock,
            rng=random.Random(settings.warehouse_fault_seed),
            sleep=sleeps,
        )

    return build


@pytest.fixture
async def client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_factory())
    async with httpx.AsyncClient(transport=transport, base_url="http://warehouse.test") as http:
        yield http
