"""Bytes schemathesis never sends: bodies that are not JSON, or JSON that Python's parser
accepts but cannot write back (NaN, 1e400, lone surrogate escapes), deep nesting.

Every operation of both services that takes a body must answer them with a documented
4xx, never a 5xx. Each of these inputs made at least one route answer 500 before
`services.common.http_errors` and the warehouse mock's `Text` validator.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.apps import AUTH, reservation_api_for_docs, warehouse_mock

SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

SPECIAL_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"\\ud800"', '"\\udfff"']
json_leaves = st.one_of(
    st.sampled_from(SPECIAL_TOKENS),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=8).map(json.dumps),
    st.sampled_from(["null", "true", "false", '"SKU-A"', "1"]),
)


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON-shaped text whose leaves include tokens only Python's parser accepts."""
    if depth > 3 or draw(st.booleans()):
        return draw(json_leaves)
    if draw(st.booleans()):
        keys = st.sampled_from(
            ["order_id", "items", "sku", "quantity", "customer_id", "force", "state", "limit"]
        )
        pairs = draw(st.lists(st.tuples(keys, json_texts(depth + 1)), max_size=4))
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"
    return "[" + ", ".join(draw(st.lists(json_texts(depth + 1), max_size=4))) + "]"


bodies = st.one_of(
    json_texts().map(str.encode),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"a": ' * n + b"1" + b"}" * n),
)


def body_operations(app: FastAPI) -> list[tuple[str, str, set[str]]]:
    """(method, concrete path, documented statuses) of every operation with a body."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                concrete = path.replace("{row_id}", "1").replace(
                    "{order_id}", "00000000-0000-4000-8000-000000000000"
                )
                found.append((method.upper(), concrete, set(operation["responses"])))
    return found


def documented(status: int, statuses: set[str]) -> bool:
    return str(status) in statuses or f"{str(status)[0]}XX" in statuses


async def send_all(
    app: FastAPI, operations: list[tuple[str, str, set[str]]], body: bytes
) -> list[tuple[str, str, set[str], httpx.Response]]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {**AUTH, "Content-Type": "application/json", "Idempotency-Key": "raw-1"}
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        return [
            (
                method,
                path,
                statuses,
                await client.request(method, path, content=body, headers=headers),
            )
            for method, path, statuses in operations
        ]


def check_all(app: FastAPI, operations: list[tuple[str, str, set[str]]], body: bytes) -> None:
    for method, path, statuses, response in asyncio.run(send_all(app, operations, body)):
        assert response.status_code < 500, (method, path, body[:200], response.text[:300])
        assert documented(response.status_code, statuses), (
            method,
            path,
            response.status_code,
            sorted(statuses),
        )


WAREHOUSE = warehouse_mock(max_body_bytes=64 * 1024)
WAREHOUSE_OPERATIONS = body_operations(WAREHOUSE)
RESERVATION_OPERATIONS = body_operations(reservation_api_for_docs())


def test_both_services_have_body_operations() -> None:
    assert {(m, p) for m, p, _ in WAREHOUSE_OPERATIONS} >= {
        ("POST", "/reservations"),
        ("PUT", "/admin/faults"),
    }
    assert {(m, p) for m, p, _ in RESERVATION_OPERATIONS} >= {
        ("POST", "/orders"),
        ("POST", "/admin/breaker"),
        ("POST", "/admin/retries/reprocess"),
    }


@SETTINGS
@given(body=bodies)
def test_warehouse_mock_never_fails_on_raw_bodies(body: bytes) -> None:
    check_all(WAREHOUSE, WAREHOUSE_OPERATIONS, body)


@pytest.mark.postgres
def test_reservation_api_never_fails_on_raw_bodies(reservation_app: FastAPI) -> None:
    # A fixture app inside @given would be rebuilt per example; one database serves all.
    @SETTINGS
    @given(body=bodies)
    def run(body: bytes) -> None:
        check_all(reservation_app, RESERVATION_OPERATIONS, body)

    run()


@pytest.mark.parametrize(
    "body",
    [
        b'{"order_id": "\\ud800", "items": [{"sku": "a", "quantity": 1}]}',
        b'{"order_id": "o", "items": [{"sku": "\\udfff", "quantity": 1}]}',
        b'{"order_id": NaN}',
        b'{"failure_rate": 1e400}',
        b'{"a": ' * 3000 + b"1" + b"}" * 3000,
    ],
)
def test_warehouse_mock_regressions(body: bytes) -> None:
    check_all(WAREHOUSE, WAREHOUSE_OPERATIONS, body)
