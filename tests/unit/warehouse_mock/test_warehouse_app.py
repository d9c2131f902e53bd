"""Route-level behaviour of the warehouse mock, in process over httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {"order_id": "order-1", "items": [{"sku": "SKU-A", "quantity": 2}]}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def put_faults(client: httpx.AsyncClient, config: dict[str, Any]) -> dict[str, Any]:
    response = await client.put("/admin/faults", json=config, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/admin/stats", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


ADMIN_CALLS = [
    ("GET", "/admin/faults", None),
    ("PUT", "/admin/faults", {}),
    ("GET", "/admin/stats", None),
    ("POST", "/admin/reset", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_admin_routes_refuse_without_the_token(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or invalid bearer token"}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_routes_accept_the_token(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code == 200


async def test_health_needs_no_token_and_ignores_faults(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"outage": True})
    response = await client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_a_missing_idempotency_key_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/reservations", json=ORDER)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert (await stats(client))["reservations"] == 0


async def test_reserve_then_duplicate_is_deflected(client: httpx.AsyncClient) -> None:
    first = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert first.status_code == 201
    assert first.json() == {
        "reservation_id": "k1",
        "order_id": "order-1",
        "items": [{"sku": "SKU-A", "quantity": 2}],
        "status": "RESERVED",
    }
    again = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert again.status_code == 200
    assert again.json() == first.json()
    report = await stats(client)
    assert report["reservations"] == 1
    assert report["duplicates_deflected"] == 1
    assert report["duplicate_reservations"] == 0
    assert report["stock"]["levels"]["SKU-A"] == 8


async def test_the_same_key_with_a_different_body_is_a_422(client: httpx.AsyncClient) -> None:
    await client.post("/reservations", json=ORDER, headers=key("k1"))
    changed = {"order_id": "order-1", "items": [{"sku": "SKU-A", "quantity": 3}]}
    response = await client.post("/reservations", json=changed, headers=key("k1"))
    assert response.status_code == 422
    assert response.json() == {"detail": "idempotency key reused with a different body"}
    report = await stats(client)
    assert (report["reservations"], report["idempotency_conflicts"]) == (1, 1)
    assert report["stock"]["levels"]["SKU-A"] == 8


async def test_a_fresh_key_per_attempt_is_counted_as_a_duplicate_reservation(
    client: httpx.AsyncClient,
) -> None:
    for attempt in ("k1", "k2", "k3"):
        response = await client.post("/reservations", json=ORDER, headers=key(attempt))
        assert response.status_code == 201
    report = await stats(client)
    assert (report["reservations"], report["duplicate_reservations"]) == (3, 2)


@pytest.mark.parametrize(
    ("items", "sku", "requested", "available"),
    [
        ([{"sku": "SKU-B", "quantity": 4}], "SKU-B", 4, 3),
        ([{"sku": "SKU-A", "quantity": 1}, {"sku": "OOS-77", "quantity": 1}], "OOS-77", 1, 0),
        ([{"sku": "SKU-B", "quantity": 2}, {"sku": "SKU-B", "quantity": 2}], "SKU-B", 4, 3),
    ],
)
async def test_short_stock_is_a_409_naming_the_sku_and_reserves_nothing(
    client: httpx.AsyncClient,
    items: list[dict[str, Any]],
    sku: str,
    requested: int,
    available: int,
) -> None:
    response = await client.post(
        "/reservations", json={"order_id": "o", "items": items}, headers=key("k1")
    )
    assert response.status_code == 409
    body = response.json()
    assert (body["sku"], body["requested"], body["available"]) == (sku, requested, available)
    assert sku in body["detail"]
    report = await stats(client)
    assert (report["reservations"], report["out_of_stock"]) == (0, 1)
    assert report["stock"]["reserved_units"] == 0
    assert report["stock"]["levels"]["SKU-A"] == 10


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "o", "items": []},
        {"order_id": "o", "items": [{"sku": "A", "quantity": 1}] * 101},
        {"order_id": "o", "items": [{"sku": "A", "quantity": 0}]},
        {"order_id": "o", "items": [{"sku": "A", "quantity": "1"}]},
        {"order_id": "o", "items": [{"sku": "A", "quantity": 1.5}]},
        {"order_id": "o", "items": [{"sku": "", "quantity": 1}]},
        {"order_id": "o", "items": [{"sku": "A", "quantity": 1, "price": 3}]},
        {"order_id": "o", "items": [{"sku": "A", "quantity": 1}], "extra": True},
        {"order_id": "", "items": [{"sku": "A", "quantity": 1}]},
        {"order_id": 12, "items": [{"sku": "A", "quantity": 1}]},
        {"items": [{"sku": "A", "quantity": 1}]},
        [],
        "text",
    ],
)
async def test_invalid_bodies_are_a_422(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/reservations", json=body, headers=key("k1"))
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert (await stats(client))["reservations"] == 0


async def test_a_hundred_items_are_accepted(client: httpx.AsyncClient) -> None:
    items = [{"sku": f"SKU-{n}", "quantity": 1} for n in range(100)]
    response = await client.post(
        "/reservations", json={"order_id": "o", "items": items}, headers=key("k1")
    )
    assert response.status_code == 201


@pytest.fixture
async def small_client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    """A mock whose body limit is 64 KiB (the default, 1 MiB, leaves room for batches)."""
    app = app_factory(warehouse_max_body_bytes=64 * 1024)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://warehouse.test"
    ) as http:
        yield http


async def test_an_oversized_body_is_a_413(small_client: httpx.AsyncClient) -> None:
    client = small_client
    body = b'{"order_id": "' + b"x" * 70_000 + b'"}'
    response = await client.post(
        "/reservations",
        content=body,
        headers={**key("k1"), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 65536 bytes"}
    assert (await stats(client))["calls"]["by_route"]["POST /reservations"] == {"413": 1}


async def test_a_streamed_oversized_body_is_a_413(small_client: httpx.AsyncClient) -> None:
    client = small_client

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 8192

    response = await client.post(
        "/reservations", content=chunks(), headers={**key("k1"), "Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_release_returns_stock_and_repeats_harmlessly(client: httpx.AsyncClient) -> None:
    await client.post("/reservations", json=ORDER, headers=key("k1"))
    for _ in range(2):
        response = await client.delete("/reservations/k1")
        assert response.status_code == 200
        assert response.json()["status"] == "RELEASED"
    report = await stats(client)
    assert report["releases"] == 1
    assert report["stock"]["levels"]["SKU-A"] == 10


async def test_release_of_an_unknown_id_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/reservations/nope")
    assert response.status_code == 404


async def test_outage_answers_503_and_reserves_nothing(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"outage": True})
    for attempt in ("k1", "k2"):
        response = await client.post("/reservations", json=ORDER, headers=key(attempt))
        assert response.status_code == 503
    assert (await client.delete("/reservations/k1")).status_code == 503
    report = await stats(client)
    assert report["reservations"] == 0
    assert report["faults"]["outage"] == 3


async def test_an_injected_429_carries_retry_after(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"failure_rate": 1, "status_codes": [429], "retry_after_seconds": 17})
    response = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert (await stats(client))["faults"]["failure"] == 1


async def test_other_injected_failures_carry_no_retry_after(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"failure_rate": 1, "status_codes": [502]})
    response = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert response.status_code == 502
    assert "Retry-After" not in response.headers


async def test_an_injected_terminal_fault_is_a_422_rejection(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"terminal_rate": 1})
    response = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert (response.status_code, response.json()) == (422, {"detail": "rejected by warehouse"})
    assert (await stats(client))["reservations"] == 0


async def test_a_timeout_fault_applies_the_reservation_then_holds_the_answer(
    client: httpx.AsyncClient, sleeps: Any
) -> None:
    await put_faults(client, {"timeout_rate": 1, "timeout_delay_seconds": 30})
    response = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert response.status_code == 201
    assert sleeps.calls == [30.0]
    await put_faults(client, {})
    retry = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert retry.status_code == 200
    report = await stats(client)
    assert (report["reservations"], report["duplicates_deflected"]) == (1, 1)
    assert report["faults"]["timeout"] == 1


async def test_latency_is_slept_before_answering(client: httpx.AsyncClient, sleeps: Any) -> None:
    await put_faults(client, {"latency": {"kind": "fixed", "ms": 250}})
    response = await client.post("/reservations", json=ORDER, headers=key("k1"))
    assert response.status_code == 201
    assert sleeps.calls == [0.25]
    assert (await stats(client))["faults"]["latency"] == 1


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"failure_rate": 1.5}, "less than or equal to 1"),
        ({"status_codes": [200]}, "greater than or equal to 400"),
        ({"scenario": [{"duration_seconds": -1}]}, "greater than 0"),
        ({"failure_rate": 0.8, "terminal_rate": 0.8}, "must not exceed 1"),
    ],
)
async def test_bad_fault_config_is_a_422_with_a_reason(
    client: httpx.AsyncClient, config: dict[str, Any], reason: str
) -> None:
    response = await client.put("/admin/faults", json=config, headers=ADMIN)
    assert response.status_code == 422
    assert reason in response.text
    faults = (await client.get("/admin/faults", headers=ADMIN)).json()
    assert faults["config"]["failure_rate"] == 0  # the old config stays


async def test_scenario_progress_is_reported_and_reverts_to_base(
    client: httpx.AsyncClient, clock: Any
) -> None:
    state = await put_faults(
        client,
        {
            "latency": 10,
            "scenario": [
                {"duration_seconds": 30, "outage": True},
                {"duration_seconds": 60, "failure_rate": 0.5},
            ],
        },
    )
    assert state["scenario"]["phase_index"] == 0
    assert state["active"]["outage"] is True
    assert (await client.post("/reservations", json=ORDER, headers=key("k1"))).status_code == 503
    clock.advance(45)
    state = (await client.get("/admin/faults", headers=ADMIN)).json()
    assert state["scenario"] == {
        "running": True,
        "phase_index": 1,
        "phase_count": 2,
        "elapsed_seconds": 45.0,
        "phase_remaining_seconds": 45.0,
        "remaining_seconds": 45.0,
    }
    assert (state["active"]["outage"], state["active"]["failure_rate"]) == (False, 0.5)
    clock.advance(45)
    state = (await client.get("/admin/faults", headers=ADMIN)).json()
    assert state["scenario"]["running"] is False
    assert state["active"]["failure_rate"] == 0
    assert state["active"]["latency"] == 10
    assert (await client.post("/reservations", json=ORDER, headers=key("k1"))).status_code == 201


async def test_stats_count_calls_by_route_and_status(client: httpx.AsyncClient) -> None:
    await client.post("/reservations", json=ORDER, headers=key("k1"))
    await client.post("/reservations", json=ORDER, headers=key("k1"))
    await client.post("/reservations", json=ORDER)
    await client.delete("/reservations/k1")
    await client.get("/health")
    await client.get("/no/such/path")
    report = await stats(client)
    assert report["calls"] == {
        "total": 6,
        "by_route": {
            "POST /reservations": {"201": 1, "200": 1, "400": 1},
            "DELETE /reservations/{reservation_id}": {"200": 1},
            "GET /health": {"200": 1},
            "unmatched": {"404": 1},
        },
    }
    # The stats call itself is counted once it has answered.
    assert (await stats(client))["calls"]["by_route"]["GET /admin/stats"] == {"200": 1}


async def test_reset_restores_the_start_state(
    app_factory: Callable[..., FastAPI], sleeps: Any
) -> None:
    app = app_factory(warehouse_faults={"failure_rate": 0.5})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def run() -> list[int]:
            codes = []
            for n in range(20):
                response = await client.post("/reservations", json=ORDER, headers=key(f"k{n}"))
                codes.append(response.status_code)
            return codes

        first = await run()
        assert 201 in first
        assert any(code >= 500 for code in first)
        await put_faults(client, {"outage": True})
        reset = await client.post("/admin/reset", headers=ADMIN)
        assert reset.status_code == 200
        assert reset.json()["reservations"] == 0
        assert reset.json()["stock"]["levels"] == {"SKU-A": 10, "SKU-B": 3}
        faults = (await client.get("/admin/faults", headers=ADMIN)).json()
        assert (faults["config"]["outage"], faults["config"]["failure_rate"]) == (False, 0.5)
        # The random sequence restarts too, so a demo replays exactly.
        assert await run() == first


async def test_metrics_are_exposed_for_prometheus(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"terminal_rate": 1})
    await client.post("/reservations", json=ORDER, headers=key("k1"))
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'steadfast_warehouse_mock_requests_total{route="POST /reservations",status="422"} 1.0'
        in text
    )
    assert 'steadfast_warehouse_mock_faults_total{kind="terminal"} 1.0' in text
    assert 'steadfast_warehouse_mock_faults_total{kind="outage"} 0.0' in text


async def test_each_app_has_its_own_registry(app_factory: Callable[..., FastAPI]) -> None:
    # Two apps in one process (as in these tests) must not collide on metric names.
    for _ in range(2):
        transport = httpx.ASGITransport(app=app_factory())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/health")
            text = (await client.get("/metrics")).text
            assert 'route="GET /health",status="200"} 1.0' in text


def test_every_operation_documents_its_responses(app_factory: Callable[..., FastAPI]) -> None:
    spec = app_factory().openapi()
    expected = {
        ("post", "/reservations"): {"200", "201", "400", "409", "413", "422", "429", "503"},
        ("delete", "/reservations/{reservation_id}"): {"200", "404", "422", "503"},
        ("put", "/admin/faults"): {"200", "400", "401", "413", "422"},
        ("get", "/admin/stats"): {"200", "401"},
    }
    for (method, path), codes in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (method, path)
        for code in codes:
            assert "schema" in responses[code]["content"]["application/json"], (path, code)
    [key_parameter] = spec["paths"]["/reservations"]["post"]["parameters"]
    assert key_parameter["name"] == "Idempotency-Key"
    assert key_parameter["required"] is True
    assert key_parameter["schema"]["type"] == "string"
    retry_after = spec["paths"]["/reservations"]["post"]["responses"]["429"]["headers"]
    assert "Retry-After" in retry_after
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/reservations", b'{"order_id": "o", "items": [{"sku": "A", "quantity": 1e400}]}'),
        ("/reservations", b'{"order_id": NaN, "items": []}'),
        ("/reservations", b"-Infinity"),
        ("/admin/faults", b'{"failure_rate": NaN}'),
        ("/admin/faults", b'{"latency": 1e400}'),
        ("/admin/faults", b'{"scenario": [{"duration_seconds": Infinity}]}'),
    ],
)
async def test_non_finite_numbers_are_a_422_not_a_500(
    client: httpx.AsyncClient, path: str, raw: bytes
) -> None:
    # Python's JSON parser accepts these; echoing them in the error must not crash.
    method = "POST" if path == "/reservations" else "PUT"
    headers = {**ADMIN, **key("k1"), "Content-Type": "application/json"}
    response = await client.request(method, path, content=raw, headers=headers)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


async def test_the_docs_and_schema_are_served(client: httpx.AsyncClient) -> None:
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "steadfast warehouse mock"
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/admin/faults", "GET, PUT"),
        ("OPTIONS", "/admin/faults", "GET, PUT"),
        ("GET", "/reservations", "POST"),
        ("PUT", "/reservations/k1", "DELETE"),
    ],
)
async def test_405_lists_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, headers=ADMIN)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize("path", ["/reservations", "/admin/faults"])
async def test_an_undecodable_body_is_a_documented_400(
    client: httpx.AsyncClient, path: str
) -> None:
    method = "POST" if path == "/reservations" else "PUT"
    headers = {**ADMIN, **key("k1"), "Content-Type": "application/json"}
    response = await client.request(method, path, content=b"\xff\xfe{", headers=headers)
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str)
