"""POST /reservations/batch: one call, many reservations, faults drawn and answered per line."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import TOKEN, RecordingSleep

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def line(n: int, sku: str = "SKU-1", quantity: int = 1) -> dict[str, Any]:
    return {
        "reservation_id": f"order-{n}",
        "order_id": f"order-{n}",
        "items": [{"sku": sku, "quantity": quantity}],
    }


async def batch(client: httpx.AsyncClient, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = await client.post("/reservations/batch", json={"reservations": lines})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert [r["reservation_id"] for r in results] == [x["reservation_id"] for x in lines]
    return results


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/admin/stats", headers=AUTH)).json()
    return body


async def faults(client: httpx.AsyncClient, config: dict[str, Any]) -> None:
    response = await client.put("/admin/faults", json=config, headers=AUTH)
    assert response.status_code == 200, response.text


async def test_every_line_is_reserved_once_and_a_repeat_is_deflected(
    client: httpx.AsyncClient,
) -> None:
    lines = [line(n) for n in range(5)]
    first = await batch(client, lines)
    assert [r["status"] for r in first] == [201] * 5
    assert all(r["reservation"]["status"] == "RESERVED" for r in first)
    again = await batch(client, lines)
    assert [r["status"] for r in again] == [200] * 5
    report = await stats(client)
    assert report["reservations"] == 5
    assert report["duplicates_deflected"] == 5
    assert report["orders_reserved"] == 5
    assert report["orders_reserved_more_than_once"] == 0
    assert report["max_reservations_per_order"] == 1
    assert report["lines"] == 10


async def test_a_fresh_key_for_an_order_counts_as_reserving_it_twice(
    client: httpx.AsyncClient,
) -> None:
    """What a broken client would do: the per-order count must move."""
    await batch(client, [line(1)])
    retry = {**line(1), "reservation_id": "order-1-retry"}
    assert (await batch(client, [retry]))[0]["status"] == 201
    report = await stats(client)
    assert report["orders_reserved_more_than_once"] == 1
    assert report["max_reservations_per_order"] == 2
    assert report["duplicate_reservations"] == 1


async def test_out_of_stock_and_conflicts_are_per_line(client: httpx.AsyncClient) -> None:
    await batch(client, [line(9)])
    conflicting = {**line(9), "items": [{"sku": "SKU-2", "quantity": 3}]}
    results = await batch(client, [line(1), line(2, sku="OOS-1"), conflicting, line(3)])
    assert [r["status"] for r in results] == [201, 409, 422, 201]
    assert "OOS-1" in results[1]["detail"]
    assert results[1]["reservation"] is None


async def test_faults_are_drawn_per_line(client: httpx.AsyncClient) -> None:
    await faults(client, {"failure_rate": 0.5, "status_codes": [503, 429]})
    results = await batch(client, [line(n) for n in range(200)])
    statuses = [r["status"] for r in results]
    failed = [r for r in results if r["status"] != 201]
    assert 60 < len(failed) < 140, statuses  # seeded: about half, not all or none
    assert {r["status"] for r in failed} == {503, 429}
    assert all(r["retry_after_seconds"] == 1 for r in failed if r["status"] == 429)
    assert all(r["retry_after_seconds"] is None for r in failed if r["status"] == 503)
    report = await stats(client)
    assert report["reservations"] == 200 - len(failed)  # a failed line reserves nothing
    assert report["faults"]["failure"] == len(failed)


async def test_an_outage_fails_every_line(client: httpx.AsyncClient) -> None:
    await faults(client, {"outage": True})
    results = await batch(client, [line(n) for n in range(3)])
    assert [r["status"] for r in results] == [503] * 3
    assert (await stats(client))["reservations"] == 0


async def test_latency_is_the_slowest_line_and_a_timed_out_line_is_applied_and_a_504(
    client: httpx.AsyncClient, sleeps: RecordingSleep
) -> None:
    await faults(client, {"latency": 40.0, "timeout_rate": 1.0, "timeout_delay_seconds": 7})
    results = await batch(client, [line(n) for n in range(4)])
    assert [r["status"] for r in results] == [504] * 4
    assert sleeps.calls == [0.04]  # once for the batch, and no hold
    report = await stats(client)
    assert report["reservations"] == 4  # applied: a retry must be deflected, not redone
    await faults(client, {})
    assert [r["status"] for r in await batch(client, [line(n) for n in range(4)])] == [200] * 4


@pytest.mark.parametrize(
    "body",
    [
        {"reservations": []},
        {"reservations": [line(n) for n in range(1001)]},
        {"reservations": [{"order_id": "o", "items": [{"sku": "S", "quantity": 1}]}]},
        {"reservations": [line(1)], "extra": 1},
    ],
    ids=["empty", "over-1000", "no-reservation-id", "unknown-field"],
)
async def test_invalid_batches_are_a_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/reservations/batch", json=body)
    assert response.status_code == 422, response.text
    assert (await stats(client))["lines"] == 0
