"""The whole pipeline, started by the launcher behind `make run`, on both local brokers:
200 orders with a healthy warehouse all end RESERVED, reserved exactly once each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import psycopg
import pytest

from local.infra import libpq_url
from tests.processes import assert_reserved_at_most_once

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 200


def _statuses(database_url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall()
    return {status: int(count) for status, count in rows}


def _place(stack: Stack, n: int) -> list[str]:
    def one(i: int) -> str:
        response = stack.post(
            "api",
            "/orders",
            json={
                "customer_id": f"e2e-{i % 17}",
                "items": [{"sku": f"SKU-{i % 5}", "quantity": 1}],
            },
            headers={"Idempotency-Key": f"e2e-{i}"},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(n)))


def _wait_all_final(stack: Stack, expected: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = _statuses(stack.database_url)
        if seen == expected:
            return
        assert stack.process.poll() is None, f"launcher exited{stack.output_tail()}"
        time.sleep(0.25)
    raise AssertionError(f"statuses {seen}, expected {expected}{stack.output_tail()}")


@pytest.mark.parametrize("broker", [None, "noida"], ids=["kafka", "noida-fallback"])
def test_200_orders_are_all_reserved_exactly_once(
    stack_factory: Callable[..., Stack], broker: str
) -> None:
    stack = stack_factory(broker=broker)
    ids = _place(stack, ORDERS)
    assert len(set(ids)) == ORDERS
    _wait_all_final(stack, {"RESERVED": ORDERS}, timeout=90)

    stats = stack.get("warehouse", "/admin/stats").json()
    assert stats["reservations"] == ORDERS
    assert_reserved_at_most_once(stats)
    assert stats["duplicates_deflected"] == 0

    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        latencies = [
            float(seconds)
            for (seconds,) in conn.execute(
                "SELECT extract(epoch FROM finalized_at - created_at) FROM orders"
            ).fetchall()
        ]
        journeys = conn.execute(
            "SELECT order_id, array_agg(status ORDER BY id) FROM order_status_history"
            " GROUP BY order_id"
        ).fetchall()
    assert len(journeys) == ORDERS
    assert all(list(steps) == ["PENDING", "RESERVED"] for _, steps in journeys)
    # A figure for the closing note, not an assertion: speed is measured in benchmarks.
    cuts = statistics.quantiles(latencies, n=100)
    print(f"\n[{broker}] POST→RESERVED p50={cuts[49]:.3f}s p99={cuts[98]:.3f}s")  # noqa: T201
