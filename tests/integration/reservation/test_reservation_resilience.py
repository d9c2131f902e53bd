"""The resilience engine end to end, with real processes and a faulty warehouse mock:
retries to success, breaker pause and recovery, terminal and poison handling, a killed
scheduler, bulk reprocessing, and per-key order under retry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from local.infra import free_port
from tests.integration.reservation.conftest import Pipeline, statuses
from tests.processes import admin_headers, assert_reserved_at_most_once, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]

BODY: dict[str, Any] = {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]}
# Fast, deterministic-enough knobs for tests: short windows and delays, many attempts.
FAST = {
    "STEADFAST_BREAKER__WINDOW_SECONDS": "5",
    "STEADFAST_BREAKER__MIN_CALLS": "10",
    "STEADFAST_BREAKER__OPEN_SECONDS": "2",
    "STEADFAST_BREAKER__SYNC_INTERVAL_SECONDS": "0.1",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.2",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "1",
    "STEADFAST_RETRY__MAX_ATTEMPTS": "25",
    "STEADFAST_INTERVAL_SECONDS": "0.2",
    "STEADFAST_REDRIVE_RATE_PER_SECOND": "200",
    "STEADFAST_REDRIVE_BURST": "50",
    "STEADFAST_WAREHOUSE__READ_TIMEOUT_SECONDS": "1",
}


def _start(pipe: Pipeline, *, scheduler: bool = True, **overrides: str) -> dict[str, str]:
    env = {**FAST, **overrides}
    ports = {name: str(free_port()) for name in ("relay", "consumer", "scheduler")}
    pipe.start("relay", "steadfast-relay", **env, STEADFAST_METRICS_PORT=ports["relay"])
    pipe.start("consumer", "steadfast-consumer", **env, STEADFAST_METRICS_PORT=ports["consumer"])
    if scheduler:
        pipe.start(
            "scheduler", "steadfast-scheduler", **env, STEADFAST_METRICS_PORT=ports["scheduler"]
        )
    return ports


def _metric(port: str, name: str) -> float:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported on :{port}")


async def _place(api: httpx.AsyncClient, n: int, body: dict[str, Any] = BODY) -> list[str]:
    async def one() -> str:
        response = await api.post("/orders", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _wait_statuses(
    engine: AsyncEngine, expected: dict[str, int], within: float, pipe: Pipeline
) -> float:
    started = time.monotonic()
    seen: dict[str, int] = {}
    while time.monotonic() - started < within:
        seen = await statuses(engine)
        if seen == expected:
            return time.monotonic() - started
        for proc in pipe.procs.values():
            assert proc.alive(), f"{proc.name} died:\n{proc.tail()}"
        await asyncio.sleep(0.25)
    tails = "\n".join(f"--- {p.name}\n{p.tail(12)}" for p in pipe.procs.values())
    raise AssertionError(f"statuses {seen}, expected {expected}\n{tails}")


async def _wait_retry_states(
    engine: AsyncEngine, expected: dict[str, int], within: float, what: str
) -> None:
    deadline = time.monotonic() + within
    while (seen := await _retry_states(engine)) != expected:
        assert time.monotonic() < deadline, f"waiting for {what}: retry rows {seen}"
        await asyncio.sleep(0.2)


async def _retry_states(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT state, count(*) FROM retry_messages GROUP BY state"))
        return {state: int(n) for state, n in rows.tuples()}


async def _dead_placement(engine: AsyncEngine, order_id: str, within: float) -> int:
    """The retry row id of `order_id`'s DEAD placement, once it is there."""
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id FROM retry_messages WHERE state = 'DEAD' AND key = :key"
                        " AND headers->>'event_type' = 'OrderPlaced'"
                    ),
                    {"key": order_id},
                )
            ).first()
        if row is not None:
            return int(row[0])
        if time.monotonic() > deadline:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT key, state, headers->>'event_type', error_class FROM retry_messages"
                    )
                )
                raise AssertionError(f"no DEAD placement for {order_id}: rows {rows.all()}")
        await asyncio.sleep(0.2)


async def test_half_the_calls_failing_still_reserves_every_order_once(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    pipeline.set_faults({"failure_rate": 0.5, "status_codes": [500, 502, 503, 429]})
    # This test is about retries, not the breaker: keep it closed at 50% failures.
    _start(pipeline, STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD="0.95")
    await _place(api, 500)
    await _wait_statuses(api_engine, {"RESERVED": 500}, 180, pipeline)
    stats = pipeline.warehouse_stats()
    assert stats["reservations"] == 500
    assert_reserved_at_most_once(stats)
    assert stats["faults"]["failure"] > 100  # the faults really happened
    states = await _retry_states(api_engine)
    assert set(states) <= {"SUCCEEDED"} and states["SUCCEEDED"] > 100
    async with api_engine.connect() as conn:
        retried = (
            await conn.execute(
                text("SELECT count(*) FROM order_status_history WHERE status = 'RETRY_PENDING'")
            )
        ).scalar_one()
    assert retried >= states["SUCCEEDED"]


async def test_an_outage_opens_the_breaker_pauses_and_recovers_by_itself(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    ports = _start(pipeline)
    await _place(api, 20)
    await _wait_statuses(api_engine, {"RESERVED": 20}, 60, pipeline)
    pipeline.set_faults({"outage": True})
    outage_started = time.monotonic()
    await _place(api, 300)
    wait_until(
        lambda: _metric(ports["consumer"], "steadfast_consumer_paused") == 1,
        30,
        "the consumer to pause",
    )
    breaker = (await api.get("/admin/breaker", headers=admin_headers())).json()
    assert breaker["state"] in ("OPEN", "HALF_OPEN")
    # Kafka holds the backlog, not the retry table. What may be parked: the first wave's
    # canary (20 calls, before the breaker has heard of the outage), then each half-open
    # period's probes (3 permits every 2 s of OPEN, FAST's settings) over 30 s.
    bound = 20 + 3 * (30 // 2 + 1)
    most_parked = 0
    while time.monotonic() - outage_started < 30:
        most_parked = max(most_parked, sum((await _retry_states(api_engine)).values()))
        assert most_parked <= bound, f"{most_parked} parked of 300: the breaker let calls through"
        await asyncio.sleep(1)
    pipeline.set_faults({"outage": False})
    drained = await _wait_statuses(api_engine, {"RESERVED": 320}, 120, pipeline)
    assert _metric(ports["consumer"], "steadfast_consumer_paused") == 0
    stats = pipeline.warehouse_stats()
    assert stats["reservations"] == 320
    assert_reserved_at_most_once(stats)
    transitions = [
        r
        for r in pipeline.procs["consumer"].logs()
        if r.get("event.action") == "breaker_transition"
    ]
    assert transitions, "the consumer logged no breaker transition"
    print(  # noqa: T201
        f"\noutage: at most {most_parked} rows parked of 300 orders; backlog drained "
        f"{drained:.1f}s after the outage ended; 0 duplicate reservations"
    )


async def test_terminal_answers_are_final_without_retry(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    _start(pipeline)
    await _place(api, 5, {"customer_id": "c", "items": [{"sku": "OOS-1", "quantity": 1}]})
    await _wait_statuses(api_engine, {"REJECTED": 5}, 60, pipeline)
    pipeline.set_faults({"terminal_rate": 1.0})
    await _place(api, 5)
    await _wait_statuses(api_engine, {"REJECTED": 10}, 60, pipeline)
    states = await _retry_states(api_engine)
    assert states == {"DEAD": 10}
    async with api_engine.connect() as conn:
        query = text("SELECT error_class, count(*), max(attempts) FROM retry_messages GROUP BY 1")
        by_class = {c: (int(n), int(a)) for c, n, a in (await conn.execute(query)).tuples()}
    assert by_class == {"http_409": (5, 1), "http_422": (5, 1)}  # one call each, no retry


async def test_poison_is_parked_dead_with_its_bytes_and_the_consumer_goes_on(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    _start(pipeline)
    garbage = b"\x00\xffnot an event\x81"
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(pipeline.topic, key=b"poison-key", value=garbage)
    producer.produce(pipeline.topic, key=b"big", value=b"{" + b" " * 900_000)
    assert producer.flush(10) == 0
    await _place(api, 3)
    await _wait_statuses(api_engine, {"RESERVED": 3}, 60, pipeline)
    deadline = time.monotonic() + 30
    rows: list[Any] = []
    while time.monotonic() < deadline and len(rows) < 2:
        async with api_engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT key, payload, state, error_class, last_error FROM retry_messages")
                )
            ).all()
        await asyncio.sleep(0.2)
    by_key = {row.key: row for row in rows}
    assert by_key["poison-key"].payload == garbage
    assert by_key["poison-key"].state == "DEAD"
    assert by_key["poison-key"].error_class == "decode"
    assert by_key["big"].state == "DEAD"
    assert len(by_key["big"].payload) == 900_001
    assert pipeline.procs["consumer"].alive()


async def _park_everything(
    pipeline: Pipeline, api: httpx.AsyncClient, engine: AsyncEngine, n: int
) -> None:
    """Orders whose first attempt failed, parked PENDING for the scheduler."""
    await _place(api, n)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (await statuses(engine)).get("RETRY_PENDING") == n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not all parked: {await statuses(engine)}")


async def test_a_scheduler_killed_mid_batch_loses_nothing(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    pipeline.set_faults({"failure_rate": 1.0, "status_codes": [503]})
    slow = {
        "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "1",
        "STEADFAST_BREAKER__MIN_CALLS": "100000",
        "STEADFAST_REDRIVE_RATE_PER_SECOND": "20",
        "STEADFAST_REDRIVE_BURST": "10",
        "STEADFAST_LEASE_SECONDS": "3",
        "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.5",
    }
    _start(pipeline, scheduler=False, **slow)
    await _park_everything(pipeline, api, api_engine, 80)
    # Slow calls: a claimed batch is in flight (its rows leased) when the kill lands.
    pipeline.set_faults({"failure_rate": 0.0, "latency": {"kind": "fixed", "ms": 700}})
    first = pipeline.start("scheduler", "steadfast-scheduler", **{**FAST, **slow})
    # Kill while a claimed batch is at the warehouse: after some re-drives went through
    # (so it is past its first batch) and while rows are leased, not between two batches.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with api_engine.connect() as conn:
            in_flight = (
                await conn.execute(
                    text("SELECT count(*) FROM retry_messages WHERE state = 'IN_PROGRESS'")
                )
            ).scalar_one()
        if in_flight and pipeline.warehouse_stats()["reservations"] >= 10:
            break
        assert asyncio.get_running_loop().time() < deadline, "re-drives did not start"
        assert first.alive(), f"the scheduler exited:\n{first.tail()}"
        await asyncio.sleep(0.05)
    first.kill()
    del pipeline.procs["scheduler"]  # killed on purpose: not a crash to report
    async with api_engine.connect() as conn:
        leased = (
            await conn.execute(
                text("SELECT count(*) FROM retry_messages WHERE state = 'IN_PROGRESS'")
            )
        ).scalar_one()
    assert leased > 0, "the kill did not land mid-batch"
    pipeline.start("scheduler-2", "steadfast-scheduler", **{**FAST, **slow})
    await _wait_statuses(api_engine, {"RESERVED": 80}, 90, pipeline)
    stats = pipeline.warehouse_stats()
    assert stats["reservations"] == 80
    assert_reserved_at_most_once(stats)
    assert await _retry_states(api_engine) == {"SUCCEEDED": 80}


async def test_bulk_reprocess_brings_dead_orders_back(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    pipeline.set_faults({"failure_rate": 1.0, "status_codes": [500]})
    _start(
        pipeline,
        STEADFAST_RETRY__MAX_ATTEMPTS="2",
        STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD="1",
        STEADFAST_BREAKER__MIN_CALLS="100000",
    )
    await _place(api, 12)
    await _wait_statuses(api_engine, {"DEAD": 12}, 60, pipeline)
    dry = await api.post(
        "/admin/retries/reprocess",
        json={"state": ["DEAD"], "dry_run": True, "limit": 100},
        headers=admin_headers(),
    )
    assert dry.status_code == 200, dry.text
    assert dry.json()["matched"] == 12
    assert await _retry_states(api_engine) == {"DEAD": 12}
    pipeline.set_faults({"failure_rate": 0.0})
    done = await api.post(
        "/admin/retries/reprocess",
        json={"state": ["DEAD"], "dry_run": False, "limit": 100},
        headers=admin_headers(),
    )
    assert done.json()["requeued"] == 12
    await _wait_statuses(api_engine, {"RESERVED": 12}, 60, pipeline)
    assert pipeline.warehouse_stats()["reservations"] == 12


async def test_a_later_event_for_a_parked_key_waits_its_turn(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    pipeline.set_faults({"failure_rate": 1.0, "status_codes": [503]})
    no_breaker = {
        "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "1",
        "STEADFAST_BREAKER__MIN_CALLS": "100000",
    }
    _start(pipeline, scheduler=False, **no_breaker)
    [order_id] = await _place(api, 1)
    await _wait_statuses(api_engine, {"RETRY_PENDING": 1}, 60, pipeline)
    assert (await api.post(f"/orders/{order_id}/cancel")).status_code == 202
    await _wait_retry_states(api_engine, {"PENDING": 2}, 30, "the cancel parked behind the order")
    # The cancel was not applied ahead of the placement: nothing was released.
    assert pipeline.warehouse_stats()["releases"] == 0
    pipeline.set_faults({"failure_rate": 0.0})
    pipeline.start("scheduler", "steadfast-scheduler", **{**FAST, **no_breaker})
    await _wait_statuses(api_engine, {"CANCELLED": 1}, 60, pipeline)
    await _wait_retry_states(api_engine, {"SUCCEEDED": 2}, 30, "the cancel's turn too")
    journey = (await api.get(f"/orders/{order_id}")).json()["journey"]
    reasons = [step["reason"] for step in journey]
    # The placement was re-driven first, saw the customer's cancel and reserved nothing;
    # then the cancel ran. A cancel wins, and per-key order held.
    placed = [i for i, r in enumerate(reasons) if r.startswith("cancelled by the customer before")]
    cancelled = [i for i, r in enumerate(reasons) if r.startswith("cancelled by the customer:")]
    assert placed and cancelled and placed[0] < cancelled[0], reasons
    assert "RESERVED" not in [step["status"] for step in journey]
    assert pipeline.warehouse_stats()["reservations"] == 0


async def test_reprocessing_the_dead_placement_of_a_cancelled_order_reserves_nothing(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    """The cancel lands while the placement's only call is in flight; the call dies on a
    terminal 400 (and so does the cancel's release). The DEAD rows left behind include
    the placement itself: reprocessing it, by hand for one order and in bulk for another,
    must reserve nothing, and both orders end CANCELLED."""
    # A 3 s call: the cancel goes in 1 s after the consumer took the event, well after its
    # prepare (milliseconds) and well before the call ends, even on a loaded machine.
    dying = {"failure_rate": 1.0, "status_codes": [400], "latency": {"kind": "fixed", "ms": 3000}}
    no_breaker = {
        "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "1",
        "STEADFAST_BREAKER__MIN_CALLS": "100000",
        "STEADFAST_WAREHOUSE__READ_TIMEOUT_SECONDS": "5",
    }
    pipeline.set_faults(dying)
    ports = _start(pipeline, scheduler=False, **no_breaker)
    pipeline.start("scheduler", "steadfast-scheduler", **{**FAST, **no_breaker})

    def in_flight() -> float:
        return _metric(ports["consumer"], "steadfast_consumer_in_flight_messages")

    async def cancelled_in_flight() -> tuple[str, int]:
        """An order cancelled mid-call; returns once its placement and cancel are handled."""
        wait_until(lambda: in_flight() == 0, 30, "an idle consumer")
        [order_id] = await _place(api, 1)
        wait_until(lambda: in_flight() >= 1, 30, "the placement taken by the consumer")
        await asyncio.sleep(1.0)  # prepared, its warehouse call under way
        assert (await api.post(f"/orders/{order_id}/cancel")).status_code == 202
        row = await _dead_placement(api_engine, order_id, 30)
        wait_until(lambda: in_flight() == 0, 30, "the cancel handled too")
        return order_id, row

    async def all_succeeded() -> None:
        deadline = time.monotonic() + 30
        while set(await _retry_states(api_engine)) != {"SUCCEEDED"}:
            assert time.monotonic() < deadline, f"retry rows {await _retry_states(api_engine)}"
            await asyncio.sleep(0.2)

    by_hand, row = await cancelled_in_flight()
    pipeline.set_faults({"failure_rate": 0.0})
    one = await api.post(f"/admin/retries/{row}/reprocess", headers=admin_headers())
    assert one.status_code == 200, one.text
    await _reprocess_dead(api)  # its cancel, whose release died on the same 400
    await _wait_statuses(api_engine, {"CANCELLED": 1}, 60, pipeline)
    await all_succeeded()

    pipeline.set_faults(dying)
    in_bulk, _ = await cancelled_in_flight()
    pipeline.set_faults({"failure_rate": 0.0})
    assert await _reprocess_dead(api) >= 1
    await _wait_statuses(api_engine, {"CANCELLED": 2}, 60, pipeline)
    await all_succeeded()
    for order_id in (by_hand, in_bulk):
        order = (await api.get(f"/orders/{order_id}")).json()
        assert order["status"] == "CANCELLED", order["journey"]
        assert "RESERVED" not in [step["status"] for step in order["journey"]]
    assert pipeline.warehouse_stats()["reservations"] == 0


async def _reprocess_dead(api: httpx.AsyncClient) -> int:
    done = await api.post(
        "/admin/retries/reprocess",
        json={"state": ["DEAD"], "dry_run": False, "limit": 100},
        headers=admin_headers(),
    )
    assert done.status_code == 200, done.text
    return int(done.json()["requeued"])


async def test_a_cancel_wins_over_a_bulk_reprocess_of_its_dead_placement(
    pipeline: Pipeline, api: httpx.AsyncClient, api_engine: AsyncEngine
) -> None:
    """Placed while the warehouse answers 503, cancelled while parked, the placement dies
    on a terminal 400, then an operator bulk-reprocesses DEAD messages (the README's
    tour): the order must stay CANCELLED with no stock held."""
    pipeline.set_faults({"failure_rate": 1.0, "status_codes": [503]})
    no_breaker = {
        "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "1",
        "STEADFAST_BREAKER__MIN_CALLS": "100000",
    }
    _start(pipeline, scheduler=False, **no_breaker)
    [order_id] = await _place(api, 1)
    await _wait_statuses(api_engine, {"RETRY_PENDING": 1}, 60, pipeline)
    assert (await api.post(f"/orders/{order_id}/cancel")).status_code == 202
    pipeline.set_faults({"failure_rate": 1.0, "status_codes": [400]})
    pipeline.start("scheduler", "steadfast-scheduler", **{**FAST, **no_breaker})
    await _wait_statuses(api_engine, {"CANCELLED": 1}, 60, pipeline)
    await _wait_retry_states(api_engine, {"DEAD": 1, "SUCCEEDED": 1}, 30, "the placement dead")
    pipeline.set_faults({"failure_rate": 0.0})
    done = await api.post(
        "/admin/retries/reprocess",
        json={"state": ["DEAD"], "dry_run": False, "limit": 100},
        headers=admin_headers(),
    )
    assert done.json()["requeued"] == 1
    await _wait_retry_states(api_engine, {"SUCCEEDED": 2}, 30, "the reprocessed placement")
    order = (await api.get(f"/orders/{order_id}")).json()
    assert order["status"] == "CANCELLED", order["journey"]
    assert "RESERVED" not in [step["status"] for step in order["journey"]]
    assert pipeline.warehouse_stats()["reservations"] == 0
