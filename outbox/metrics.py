"""Prometheus metrics of the outbox relay and its Kafka producer, on an injected registry."""

from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

# From a commit to the broker's ack: milliseconds when healthy, minutes during an outage.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending_rows = Gauge(
            "steadfast_outbox_pending_rows",
            "Outbox rows not yet published",
            registry=registry,
        )
        self.oldest_age_seconds = Gauge(
            "steadfast_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            registry=registry,
        )
        self.published = Counter(
            "steadfast_outbox_published_total",
            "Outbox events the broker acknowledged",
            registry=registry,
        )
        self.publish_errors = Counter(
            "steadfast_outbox_publish_errors_total",
            "Outbox events the broker did not acknowledge, by error code",
            ["reason"],
            registry=registry,
        )
        self.publish_latency = Histogram(
            "steadfast_outbox_publish_latency_seconds",
            "Time from an outbox row's creation to the broker's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "steadfast_outbox_batch_size",
            "Rows per claimed batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )


class ProducerStatsMetrics:
    """librdkafka's statistics (the `stats_cb` JSON) as gauges.

    librdkafka's counters are cumulative per producer instance and restart at zero with
    a new producer, so they are exported as gauges rather than Prometheus counters.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tx_messages = Gauge(
            "steadfast_kafka_producer_tx_messages",
            "Messages the producer has sent to brokers (librdkafka txmsgs)",
            registry=registry,
        )
        self.tx_bytes = Gauge(
            "steadfast_kafka_producer_tx_bytes",
            "Bytes the producer has sent to brokers (librdkafka tx_bytes)",
            registry=registry,
        )
        self.queue_messages = Gauge(
            "steadfast_kafka_producer_queue_messages",
            "Messages waiting in the producer's queue (librdkafka msg_cnt)",
            registry=registry,
        )
        self.broker_rtt_seconds = Gauge(
            "steadfast_kafka_producer_broker_rtt_seconds",
            "Average request round-trip time per broker (librdkafka rtt.avg)",
            ["broker"],
            registry=registry,
        )

    def observe(self, stats_json: str) -> None:
        """Update the gauges from one statistics document; never raises.

        The document is read whole before any gauge changes, so a malformed one leaves
        the last good values in place.
        """
        try:
            stats = json.loads(stats_json)
            totals = {
                gauge: float(stats[field])
                for gauge, field in (
                    (self.tx_messages, "txmsgs"),
                    (self.tx_bytes, "tx_bytes"),
                    (self.queue_messages, "msg_cnt"),
                )
            }
            # Bootstrap placeholders (nodeid -1) vanish once metadata names the brokers.
            # A window without requests reports avg 0, which is no round trip at all: the
            # gauge keeps the last measured one instead.
            rtts = {
                name: float(broker["rtt"]["avg"]) / 1e6
                for name, broker in stats.get("brokers", {}).items()
                if broker.get("nodeid", -1) >= 0 and broker["rtt"].get("cnt", 1) > 0
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Called from librdkafka's poll; a bad document must not break delivery.
            log.debug(
                "unreadable producer statistics",
                extra={"event.action": "kafka_stats_unreadable", "error.message": str(exc)},
            )
            return
        for gauge, value in totals.items():
            gauge.set(value)
        for name, seconds in rtts.items():
            self.broker_rtt_seconds.labels(broker=name).set(seconds)
