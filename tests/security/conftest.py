"""Fixtures for the security tests: the services as their entry points wire them."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from tests.fuzz.apps import reservation_app_on


@pytest.fixture
def reservation_app(database_url: str) -> FastAPI:
    """The reservation API on a fresh migrated database."""
    return reservation_app_on(database_url)
