"""Resource limits a caller cannot talk its way past.

- Request bodies: every operation that takes one, in both services, answers 413 (and
  documents it) once the body passes the configured cap, whether the size is declared in
  Content-Length or the body is streamed without one.
- Pagination: every list operation (a 200 body with an `items` array and a `next_cursor`)
  takes a `limit` with a documented maximum; above it, even absurdly, is a 422.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.fuzz.apps import AUTH, MAX_BODY_BYTES, warehouse_mock

pytestmark = pytest.mark.postgres

WAREHOUSE_MAX = 8 * 1024


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
    ]


def is_list(document: dict[str, Any], operation: dict[str, Any]) -> bool:
    ok = operation["responses"].get("200", {})
    schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
    properties = _resolve(document, schema).get("properties", {})
    return properties.get("items", {}).get("type") == "array" and "next_cursor" in properties


def concrete(path: str) -> str:
    return path.replace("{row_id}", "1").replace(
        "{order_id}", "00000000-0000-4000-8000-000000000000"
    )


async def request(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://limits") as client:
        headers = {**AUTH, "Content-Type": "application/json", "Idempotency-Key": "k-1"}
        return await client.request(method, concrete(path), headers=headers, **kwargs)


async def stream(size: int) -> AsyncIterator[bytes]:
    """A JSON-looking body in chunks, with no Content-Length."""
    yield b'{"pad": "'
    sent = 0
    while sent < size:
        yield b"x" * 4096
        sent += 4096
    yield b'"}'


def check_body_limit(app: FastAPI, limit: int) -> int:
    checked = 0
    for method, path, operation in operations(app):
        if "requestBody" not in operation:
            continue
        assert "413" in operation["responses"], (method, path, "413 undocumented")
        declared = asyncio.run(request(app, method, path, content=b" " * (limit + 1)))
        assert declared.status_code == 413, (method, path, declared.text)
        streamed = asyncio.run(request(app, method, path, content=stream(limit)))
        assert streamed.status_code == 413, (method, path, streamed.text)
        assert str(limit) in streamed.json()["detail"]
        checked += 1
    return checked


def test_reservation_api_caps_every_body(reservation_app: FastAPI) -> None:
    assert check_body_limit(reservation_app, MAX_BODY_BYTES) >= 4


def test_warehouse_mock_caps_every_body() -> None:
    assert check_body_limit(warehouse_mock(max_body_bytes=WAREHOUSE_MAX), WAREHOUSE_MAX) >= 2


def test_a_body_just_under_the_cap_is_read() -> None:
    app = warehouse_mock(max_body_bytes=WAREHOUSE_MAX)
    body = b'{"order_id": "o-1", "items": [{"sku": "SKU-A", "quantity": 1}]}'
    padded = body + b" " * (WAREHOUSE_MAX - len(body))
    assert asyncio.run(request(app, "POST", "/reservations", content=padded)).status_code == 201


def test_every_list_operation_has_a_bounded_limit(reservation_app: FastAPI) -> None:
    checked = []
    for app in (reservation_app, warehouse_mock()):
        document = app.openapi()
        for method, path, operation in operations(app):
            if method != "GET" or not is_list(document, operation):
                continue
            limit = next((p for p in operation.get("parameters", []) if p["name"] == "limit"), None)
            assert limit is not None, (path, "list without limit")
            maximum = limit["schema"].get("maximum")
            assert isinstance(maximum, int) and maximum <= 1000, (path, limit)
            at_max = asyncio.run(request(app, "GET", path, params={"limit": maximum}))
            assert at_max.status_code == 200, (path, at_max.text)
            for too_many in (maximum + 1, 10**12, -1, 0):
                response = asyncio.run(request(app, "GET", path, params={"limit": too_many}))
                assert response.status_code == 422, (path, too_many, response.text)
            checked.append(path)
    assert set(checked) >= {"/orders", "/admin/retries"}
