"""Fixtures for schema-driven fuzzing (builders in tests/fuzz/apps.py).

The schemas are loaded at import time from apps that are never called (schemathesis's
`from_fixture` is broken under pytest 9: it writes `Function._nodeid`); each test then
sends its calls to the app its fixture built, with `call_and_validate(app=...)`.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from tests.fuzz.apps import reservation_app_on


@pytest.fixture
def reservation_app(database_url: str) -> FastAPI:
    """The reservation API on a fresh migrated database."""
    return reservation_app_on(database_url)
