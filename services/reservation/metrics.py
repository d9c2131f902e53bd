"""Prometheus metrics of the reservation service, each set on an injected registry.

Names follow `steadfast_<noun>_<unit>`; a unit test checks that every metric the
dashboards and alert rules name is defined somewhere in the code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Placement → final state spans retries, so the buckets reach into minutes.
E2E_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.orders_placed = Counter(
            "steadfast_orders_placed_total", "Orders accepted by the API", registry=registry
        )
        self.idempotent_replays = Counter(
            "steadfast_orders_idempotent_replays_total",
            "POST /orders answered from an earlier request with the same Idempotency-Key",
            registry=registry,
        )
        self.cancels = Counter(
            "steadfast_orders_cancel_requested_total",
            "Cancel requests accepted",
            registry=registry,
        )
        self.request_seconds = Histogram(
            "steadfast_http_request_seconds",
            "API request duration",
            ["method", "route", "status"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )


class OrderOutcomeMetrics:
    """Final outcomes, observed where an order reaches a final state (consumer or scheduler)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.orders_final = Counter(
            "steadfast_orders_final_total",
            "Orders that reached a final status",
            ["status"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "steadfast_order_end_to_end_seconds",
            "Time from order placed to its final status",
            ["status"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        # Every status exists from the start, so increase() sees the first order too.
        for status in ("RESERVED", "REJECTED", "DEAD", "CANCELLED"):
            self.orders_final.labels(status)


class WarehouseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "steadfast_warehouse_request_seconds",
            "Warehouse call duration by operation and outcome status",
            ["operation", "status"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.paused = Gauge(
            "steadfast_consumer_paused",
            "1 while the consumer holds its partitions paused",
            registry=registry,
        )
        self.in_flight = Gauge(
            "steadfast_consumer_in_flight_messages",
            "Messages taken from Kafka, not yet acked",
            registry=registry,
        )
        self.released = Counter(
            "steadfast_consumer_released",
            "Buffered messages handed back unprocessed at a rebalance (Kafka redelivers them)",
            registry=registry,
        )
        self.unreadable = Counter(
            "steadfast_consumer_unreadable_records",
            "Records that could not be turned into a message, parked as poison",
            registry=registry,
        )
        self.batch_failures = Counter(
            "steadfast_consumer_batch_failures",
            "Batches handed back for redelivery after an unexpected error in the consumer",
            registry=registry,
        )
        self.batch_size = Histogram(
            "steadfast_consumer_batch_messages",
            "Messages per batch handed to the engine",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        )
        self.lag = Gauge(
            "steadfast_consumer_lag_messages",
            "Committed-offset lag of the consumer group per partition",
            ["topic", "partition"],
            registry=registry,
        )
