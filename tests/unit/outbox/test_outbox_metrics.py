"""librdkafka statistics become producer gauges; a bad document never raises."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from outbox.metrics import OutboxMetrics, ProducerStatsMetrics

STATS = {
    "name": "relay#producer-1",
    "txmsgs": 1234,
    "tx_bytes": 56789,
    "msg_cnt": 17,
    "brokers": {
        "127.0.0.1:9092/bootstrap": {"nodeid": -1, "rtt": {"avg": 0}},
        "127.0.0.1:9092/1": {"nodeid": 1, "rtt": {"avg": 2500}},
    },
}


def test_stats_document_sets_the_gauges() -> None:
    registry = CollectorRegistry()
    ProducerStatsMetrics(registry).observe(json.dumps(STATS))

    assert registry.get_sample_value("steadfast_kafka_producer_tx_messages") == 1234
    assert registry.get_sample_value("steadfast_kafka_producer_tx_bytes") == 56789
    assert registry.get_sample_value("steadfast_kafka_producer_queue_messages") == 17
    rtt = registry.get_sample_value(
        "steadfast_kafka_producer_broker_rtt_seconds", {"broker": "127.0.0.1:9092/1"}
    )
    assert rtt == 0.0025
    bootstrap = registry.get_sample_value(
        "steadfast_kafka_producer_broker_rtt_seconds", {"broker": "127.0.0.1:9092/bootstrap"}
    )
    assert bootstrap is None


def test_a_window_without_requests_keeps_the_last_round_trip() -> None:
    registry = CollectorRegistry()
    stats = ProducerStatsMetrics(registry)
    stats.observe(json.dumps(STATS))
    idle = {**STATS, "brokers": {"127.0.0.1:9092/1": {"nodeid": 1, "rtt": {"avg": 0, "cnt": 0}}}}
    stats.observe(json.dumps(idle))
    rtt = registry.get_sample_value(
        "steadfast_kafka_producer_broker_rtt_seconds", {"broker": "127.0.0.1:9092/1"}
    )
    assert rtt == 0.0025


def test_an_unreadable_document_changes_nothing_and_does_not_raise() -> None:
    registry = CollectorRegistry()
    stats = ProducerStatsMetrics(registry)
    stats.observe(json.dumps(STATS))
    for bad in ("not json", "[]", json.dumps({"brokers": {"b": "x"}})):
        stats.observe(bad)
    assert registry.get_sample_value("steadfast_kafka_producer_tx_messages") == 1234


def test_outbox_metric_names() -> None:
    registry = CollectorRegistry()
    OutboxMetrics(registry)
    names = {metric.name for metric in registry.collect()}
    assert {
        "steadfast_outbox_pending_rows",
        "steadfast_outbox_oldest_age_seconds",
        "steadfast_outbox_published",  # a counter's family name drops `_total`
        "steadfast_outbox_publish_errors",
        "steadfast_outbox_publish_latency_seconds",
        "steadfast_outbox_batch_size",
    } <= names
