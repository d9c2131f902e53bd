"""Every admin route of both services needs the bearer token.

The routes are enumerated from the apps themselves (their route tables, hidden routes
included, and their OpenAPI documents), so an admin route added later without the token
dependency fails here. For each: no token is a 401 with `WWW-Authenticate: Bearer`, a wrong
token or scheme is a 401/403, auth is checked before the body (an anonymous caller learns
nothing about the schema), and the right token gets past auth.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from tests.fuzz.apps import AUTH, TOKEN, reservation_api_for_docs, warehouse_mock

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PREFIX = "/admin"
WRONG = [
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
]


def _walk(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI >= 0.16x keeps an included router as one entry that wraps the original.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(list(inner.routes))


def admin_operations(app: FastAPI) -> set[tuple[str, str]]:
    found = {
        # "{row_id:int}" is the route's convertor; the document says "{row_id}".
        (method, re.sub(r":\w+}", "}", route.path))
        for route in _walk(list(app.router.routes))
        for method in (route.methods or set()) - {"HEAD"}
        if route.path.startswith(ADMIN_PREFIX)
    }
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(ADMIN_PREFIX):
            found |= {(method.upper(), path) for method in operations}
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


async def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth") as client:
        return await client.request(method, concrete(path), **kwargs)


def check_every_admin_route(app: FastAPI, expected: set[tuple[str, str]]) -> None:
    operations = admin_operations(app)
    assert operations >= expected, operations
    for method, path in sorted(operations):
        body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}

        anonymous = asyncio.run(call(app, method, path, **body))
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers.get("WWW-Authenticate") == "Bearer", (method, path)

        garbage = asyncio.run(
            call(app, method, path, content=b"{not json", headers={"Content-Type": "x/y"})
        )
        assert garbage.status_code == 401, (method, path, "auth before body", garbage.text)

        for headers in WRONG:
            wrong = asyncio.run(call(app, method, path, headers=headers, **body))
            assert wrong.status_code in (401, 403), (method, path, headers, wrong.text)

        right = asyncio.run(call(app, method, path, headers=AUTH, **body))
        assert right.status_code not in (401, 403), (method, path, right.text)
        assert right.status_code < 500, (method, path, right.text)


def test_every_reservation_admin_route_needs_the_token(reservation_app: FastAPI) -> None:
    check_every_admin_route(
        reservation_app,
        {
            ("GET", "/admin/retries"),
            ("POST", "/admin/retries/reprocess"),
            ("POST", "/admin/breaker"),
            ("GET", "/admin/breaker"),
        },
    )


def test_every_warehouse_admin_route_needs_the_token() -> None:
    check_every_admin_route(
        warehouse_mock(),
        {("GET", "/admin/faults"), ("PUT", "/admin/faults"), ("POST", "/admin/reset")},
    )


def test_the_documents_declare_bearer_auth_on_admin_routes() -> None:
    for app in (reservation_api_for_docs(), warehouse_mock()):
        document = app.openapi()
        schemes = document["components"]["securitySchemes"]
        assert any(s == {"type": "http", "scheme": "bearer"} | s for s in schemes.values())
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if path.startswith(ADMIN_PREFIX):
                    assert operation.get("security"), (method, path)
                    assert "401" in operation["responses"], (method, path)


@pytest.mark.parametrize("module", ["retry/admin.py", "services/warehouse_mock/admin.py"])
def test_tokens_are_compared_in_constant_time(module: str) -> None:
    """`==` on a token leaks, through timing, how much of a guess was right."""
    source = (ROOT / module).read_text()
    assert "secrets.compare_digest" in source, module
    assert not re.search(r"(credentials|token|given|expected)[^\n#]*\s(==|!=)\s", source), module


def test_a_new_admin_route_without_the_token_is_caught() -> None:
    app = warehouse_mock()

    @app.get("/admin/forgotten", include_in_schema=False)
    async def forgotten() -> dict[str, str]:
        return {"oops": "open"}

    assert ("GET", "/admin/forgotten") in admin_operations(app)
    with pytest.raises(AssertionError, match="forgotten"):
        check_every_admin_route(app, set())
