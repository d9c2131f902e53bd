"""The duplicate-reservation check every pipeline test relies on, shown able to fail.

`assert_reserved_at_most_once` reads the mock's per-order counts. Against the consumer's
real warehouse client (the order id is the reservation key, so a redelivery replays) it
passes; against a deliberately broken consumer that keys each attempt afresh (what a
client using the event id or a random key would do) it goes red.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.reservation.metrics import WarehouseMetrics
from services.reservation.settings import WarehouseClientConfig
from services.reservation.warehouse import ReserveLine, WarehouseClient
from tests.processes import Proc, admin_headers, assert_reserved_at_most_once, start_warehouse

ITEMS = [{"sku": "SKU-1", "quantity": 1}]


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Proc]:
    proc = start_warehouse(tmp_path)
    yield proc
    proc.stop()


def _stats(mock: Proc) -> dict[str, Any]:
    response = httpx.get(f"{mock.urls['base']}/admin/stats", headers=admin_headers())
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def test_the_real_client_redelivered_reserves_each_order_once(mock: Proc) -> None:
    client = WarehouseClient.create(
        WarehouseClientConfig(base_url=mock.urls["base"]), WarehouseMetrics(CollectorRegistry())
    )
    lines = [ReserveLine(uuid.uuid4(), ITEMS) for _ in range(5)]
    try:
        for _ in range(3):  # the batch, then two redeliveries of it
            answers = await client.reserve_many(lines)
            assert not [a for a in answers if isinstance(a, Exception)]
    finally:
        await client.aclose()
    stats = _stats(mock)
    assert stats["orders_reserved"] == 5
    assert_reserved_at_most_once(stats)


def test_a_consumer_keying_each_attempt_afresh_is_caught(mock: Proc) -> None:
    order_id = str(uuid.uuid4())
    for _ in range(2):  # a redelivery, reserved again under a new key
        line = {"reservation_id": str(uuid.uuid4()), "order_id": order_id, "items": ITEMS}
        response = httpx.post(
            f"{mock.urls['base']}/reservations/batch", json={"reservations": [line]}
        )
        assert response.json()["results"][0]["status"] == 201
    stats = _stats(mock)
    assert stats["max_reservations_per_order"] == 2
    with pytest.raises(AssertionError):
        assert_reserved_at_most_once(stats)
