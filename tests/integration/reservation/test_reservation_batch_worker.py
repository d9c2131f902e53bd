"""The consumer's batch worker on the real engine and PostgreSQL: nothing stalls a partition.

The worker sees Kafka events only through the callables it is given, so these tests feed
it plain records and inject failures at the points a real record or a bug would raise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from retry.model import Message
from services.reservation.acks import OrderedAcks
from services.reservation.consumer import BatchWorker, fallback_message, to_message
from services.reservation.metrics import ConsumerMetrics
from tests.integration.retry_engine.engine_support import Rig

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Record:
    offset: int
    key: str
    unreadable: bool = False


class Runtime:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def process(self, deliveries: Any) -> Any:
        return await self.rig.processor.process(deliveries)

    async def breaker_state(self) -> str:
        return "CLOSED"


def convert(record: Record) -> Message:
    if record.unreadable:
        raise OverflowError("date value out of range")  # what a bad CreateTime raised
    return Message(
        topic="orders",
        partition=0,
        offset=record.offset,
        key=record.key,
        value=b"{}",
        headers={"event_id": f"e-{record.offset}"},
    )


def worker_for(
    rig: Rig, acked: list[int], released: list[int], linger: float = 0.0
) -> tuple[BatchWorker, Any]:
    metrics = ConsumerMetrics(CollectorRegistry())

    async def ack(record: Record) -> None:
        acked.append(record.offset)

    worker = BatchWorker(
        Runtime(rig),
        OrderedAcks(ack, lambda record: released.append(record.offset)),
        convert=convert,
        fallback=lambda record: Message(
            topic="orders",
            partition=0,
            offset=record.offset,
            value=b"{}",
            key=record.key,
            headers={"event_id": f"e-{record.offset}"},
        ),
        ours=lambda record: True,
        partition_of=lambda record: (1, "orders", 0),
        offset_of=lambda record: record.offset,
        gate=None,
        metrics=metrics,
        batch_max=10,
        linger_seconds=linger,
    )
    return worker, metrics


async def test_an_unreadable_record_is_parked_as_poison_and_the_partition_moves_on(
    rig: Rig,
) -> None:
    acked: list[int] = []
    worker, metrics = worker_for(rig, acked, [])
    records = [Record(0, "a"), Record(1, "b", unreadable=True), Record(2, "c")]
    for record in records:
        await worker.put(record)
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(acked) == 3)
    finally:
        task.cancel()
    assert acked == [0, 1, 2]  # committed past the unreadable one, in order
    [row] = await rig.rows()
    assert (row["state"], row["error_class"], row["source_offset"]) == ("DEAD", "decode", 1)
    assert "OverflowError" in row["last_error"]
    assert [m for m, _ in rig.app.calls] == ["e-0", "e-2"]
    unreadable = metrics.unreadable._value.get()
    assert unreadable == 1


async def test_a_bug_in_the_loop_is_retried_in_place_and_the_loop_goes_on(rig: Rig) -> None:
    acked: list[int] = []
    worker, metrics = worker_for(rig, acked, [])
    calls = 0
    real = worker.handle

    async def flaky(events: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug outside the engine")
        await real(events, **kwargs)

    worker.handle = flaky  # type: ignore[method-assign]
    await worker.put(Record(0, "a"))
    await worker.put(Record(1, "b"))
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(acked) == 2)
    finally:
        task.cancel()
    assert acked == [0, 1]
    assert [m for m, _ in rig.app.calls] == ["e-0", "e-1"]
    assert metrics.batch_failures._value.get() == 1


async def test_a_batch_that_keeps_failing_is_parked_for_the_redrive(rig: Rig) -> None:
    acked: list[int] = []
    worker, _ = worker_for(rig, acked, [])
    real = worker.handle

    async def broken(events: Any, *, failed_with: Exception | None = None) -> None:
        if failed_with is None:
            raise RuntimeError("a bug outside the engine")
        await real(events, failed_with=failed_with)

    worker.handle = broken  # type: ignore[method-assign]
    await worker.put(Record(0, "a"))
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: acked == [0])
    finally:
        task.cancel()
    [row] = await rig.rows()
    # Retryable: the re-drive runs the handler without the consumer's loop.
    assert (row["state"], row["error_class"], row["message_id"]) == ("PENDING", "unexpected", "e-0")
    assert rig.app.calls == []
    assert await rig.redrive_all() == ["succeeded"]


@pytest.mark.parametrize(("linger", "batches"), [(0.0, 2), (0.3, 1)])
async def test_a_linger_gathers_events_that_arrive_just_after_the_first(
    rig: Rig, linger: float, batches: int
) -> None:
    acked: list[int] = []
    worker, metrics = worker_for(rig, acked, [], linger=linger)
    task = asyncio.create_task(worker.run())
    try:
        await worker.put(Record(0, "a"))
        await asyncio.sleep(0.1)  # inside the linger, after a batch without one began
        for offset in (1, 2, 3):
            await worker.put(Record(offset, f"k{offset}"))
        await _until(lambda: len(acked) == 4)
    finally:
        task.cancel()
    assert acked == [0, 1, 2, 3]
    histogram = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    assert histogram["steadfast_consumer_batch_messages_count"] == batches


async def _until(check: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _event(timestamp: float | None, value: bytes | None = b"{}") -> Any:
    message = SimpleNamespace(
        topic="orders",
        partition=0,
        offset=7,
        timestamp=timestamp,
        key=b"k",
        value=value,
        headers=[("event_id", b"e-7")],
    )
    return SimpleNamespace(message=message)


def test_a_year_9999_create_time_is_kept_and_a_later_one_is_unknown() -> None:
    year_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert to_message(_event(year_9999), "g").timestamp is not None
    assert to_message(_event(year_9999 * 10), "g").timestamp is None  # not a Python date
    assert fallback_message(_event(None, value=None), "g").value == b""
