"""Kafka helpers for the benches: fill a topic, read end offsets and a group's lag."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.orders import BenchOrder


def produce_orders(bootstrap: str, topic: str, orders: Iterable[BenchOrder], timeout: float) -> int:
    """Publish one OrderPlaced record per order, keyed like the relay; returns the count.

    The same producer settings as the relay (idempotent, acks=all), so partitioning and
    ordering match what the consumer sees in production.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 200_000,
        }
    )
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    deadline = time.monotonic() + timeout
    for order in orders:
        while True:
            try:
                producer.produce(
                    topic,
                    key=str(order.order_id),
                    value=order.payload.encode(),
                    headers=order.kafka_headers(),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"producing to {topic} took over {timeout:.0f}s") from None
        count += 1
    remaining = producer.flush(max(1.0, deadline - time.monotonic()))
    if remaining or failures:
        raise RuntimeError(
            f"{remaining} records undelivered, {len(failures)} failed: {failures[:3]}"
        )
    return count


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The high watermark of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def group_lag(bootstrap: str, topic: str, partitions: int, group: str) -> int:
    """Messages in `topic` that `group` has not committed yet (all of them if it never did)."""
    ends = end_offsets(bootstrap, topic, partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    except KafkaException:
        return sum(ends.values())
    finally:
        consumer.close()
    return sum(ends[tp.partition] - max(tp.offset, 0) for tp in committed)
