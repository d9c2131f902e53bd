"""Traces leave the processes over OTLP: one trace per order, from the client's request
through the API, the relay, the consumer's warehouse call and the scheduler's re-drive.

The stack runs under the launcher with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local
receiver (tests/otlp.py) that decodes what each process's exporter really sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from local.infra import libpq_url
from tests.otlp import OtlpReceiver, ReceivedSpan

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENV = {
    # Spans leave every 100 ms instead of every 5 s.
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.2",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "0.5",
    "STEADFAST_RETRY__JITTER": "0",
    "STEADFAST_INTERVAL_SECONDS": "0.3",
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def _status(stack: Stack, order_id: str) -> str:
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        row = conn.execute("SELECT status FROM orders WHERE id = %s", (order_id,)).fetchone()
    return str(row[0]) if row else "missing"


def _wait(what: str, check: Callable[[], bool], stack: Stack, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}{stack.output_tail()}"
        assert stack.process.poll() is None, f"launcher exited{stack.output_tail()}"
        time.sleep(0.1)


def test_one_trace_runs_from_the_request_through_relay_consumer_and_redrive(
    stack_factory: Callable[..., Stack], receiver: OtlpReceiver
) -> None:
    stack = stack_factory(env={**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    # The first attempt fails (503, retryable) so the order is parked; the re-drive then
    # reserves it once the warehouse is healthy again.
    response = stack.put("warehouse", "/admin/faults", json={"failure_rate": 1.0})
    assert response.status_code == 200, response.text

    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    placed = stack.post(
        "api",
        "/orders",
        json={"customer_id": "traced", "items": [{"sku": "SKU-1", "quantity": 1}]},
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
    )
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]
    _wait("the order to be parked", lambda: _status(stack, order_id) == "RETRY_PENDING", stack)
    assert stack.put("warehouse", "/admin/faults", json={}).status_code == 200
    _wait("the order to be reserved", lambda: _status(stack, order_id) == "RESERVED", stack)

    def spans() -> dict[str, list[ReceivedSpan]]:
        by_service: dict[str, list[ReceivedSpan]] = {}
        for span in receiver.trace(trace_id):
            by_service.setdefault(span.service, []).append(span)
        return by_service

    wanted = {"reservation-api", "outbox-relay", "reservation-consumer", "retry-scheduler"}
    _wait(f"spans from {sorted(wanted)}", lambda: wanted <= set(spans()), stack, timeout=15)
    got = spans()

    every = receiver.trace(trace_id)
    by_id = {s.span_id: s for s in every}

    def ancestors(span: ReceivedSpan) -> list[str]:
        chain = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append(f"{span.service}:{span.name}")
        return [*chain, span.parent_span_id]

    # The API continues the client's trace: FastAPI's server span is the child of the
    # caller's, and the order is placed in a span under it.
    (server,) = [s for s in got["reservation-api"] if s.kind == "SPAN_KIND_SERVER"]
    assert server.parent_span_id == client_span, server
    (place,) = [s for s in got["reservation-api"] if s.name == "place order"]
    api_chain = ["reservation-api:place order", f"reservation-api:{server.name}", client_span]
    assert ancestors(place) == api_chain[1:], ancestors(place)
    # The relay's publish, and each warehouse attempt, hang off the placement's span.
    (publish,) = got["outbox-relay"]
    assert publish.kind == "SPAN_KIND_PRODUCER" and not publish.failed, publish
    assert ancestors(publish) == api_chain, ancestors(publish)
    (first,) = got["reservation-consumer"]
    (redrive,) = got["retry-scheduler"]
    for span, attempt, failed in ((first, 1, True), (redrive, 2, False)):
        assert span.name == "warehouse reserve" and span.kind == "SPAN_KIND_CLIENT", span
        assert ancestors(span) == api_chain, (span, ancestors(span))
        assert span.attributes["steadfast.order_id"] == order_id, span
        assert (span.attributes["steadfast.attempt"], span.failed) == (attempt, failed), span
