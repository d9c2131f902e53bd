"""Grafana provisioning and dashboards, checked offline.

Every panel queries the provisioned datasource by uid; every metric a panel or alert rule
names is defined in the code (a renamed metric breaks this test, not a dashboard at 3 am);
every expression is valid PromQL (promtool parses them as recording rules). Running each
query against a live Prometheus is the live test's job (tests/observability_queries.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from observability_queries import (
    DATASOURCE_UID,
    ROOT,
    alert_rule_queries,
    dashboard_queries,
    exported_metric_names,
    is_exported,
    iter_panels,
    load_dashboards,
    metric_names,
)

PROVISIONING = ROOT / "grafana" / "provisioning"
RULES_TEST = ROOT / "local" / "alerts_test.yml"

# The librdkafka statistics the Kafka dashboard's producer panels use, in one place so they
# can be reconciled with outbox/metrics.py (ProducerStatsMetrics).
PRODUCER_METRICS = frozenset(
    {
        "steadfast_kafka_producer_tx_messages",
        "steadfast_kafka_producer_queue_messages",
        "steadfast_kafka_producer_broker_rtt_seconds",
    }
)

# What each dashboard must show (DESIGN.md "Observability names" and the brief), by metric.
REQUIRED_METRICS = {
    "overview.json": {
        "steadfast_orders_placed_total",
        "steadfast_orders_final_total",
        "steadfast_order_end_to_end_seconds_bucket",
        "steadfast_consumed_messages_total",
        "steadfast_warehouse_request_seconds_count",
        "steadfast_breaker_state",
        "steadfast_retry_rows",
        "steadfast_consumer_lag_messages",
        "steadfast_outbox_oldest_age_seconds",
        "ALERTS",
    },
    "kafka.json": {
        "steadfast_outbox_published_total",
        "steadfast_outbox_publish_latency_seconds_bucket",
        "steadfast_outbox_batch_size_bucket",
        "steadfast_kafka_producer_queue_messages",
        "steadfast_outbox_publish_errors_total",
        "steadfast_consumer_lag_messages",
        "steadfast_consumed_messages_total",
        "steadfast_consumer_paused",
        "steadfast_consumer_in_flight_messages",
    },
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. `make test` installs it (Debian package `prometheus`: "
            "apt-get install -y --no-install-recommends prometheus)."
        )
    return path


# --------------------------------------------------------------------------- provisioning


def test_datasource_is_provisioned_with_the_uid_panels_use() -> None:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    sources = config["datasources"]
    assert [s["uid"] for s in sources] == [DATASOURCE_UID]
    assert sources[0]["type"] == "prometheus"
    assert sources[0]["url"].startswith("http")


def test_dashboard_provider_points_at_a_file_directory() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "steadfast.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# --------------------------------------------------------------------------- structure


def test_dashboards_exist_and_parse() -> None:
    boards = load_dashboards()
    assert set(boards) == {"overview.json", "kafka.json"}
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board.get("title"), name
        assert board.get("id") is None, f"{name}: a fixed id clashes on import"
        assert board["panels"], name


@pytest.mark.parametrize("name", ["overview.json", "kafka.json"])
def test_every_panel_queries_the_provisioned_datasource(name: str) -> None:
    board = load_dashboards()[name]
    ids = []
    for panel in iter_panels(board["panels"]):
        ids.append(panel["id"])
        assert "gridPos" in panel, panel["title"]
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
        targets = panel.get("targets", [])
        assert targets, f"{title}: no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), title
        for target in targets:
            assert target["datasource"]["uid"] == DATASOURCE_UID, title
            assert target.get("expr", "").strip(), f"{title}: empty expression"
    assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_queries_are_plain_promql_a_live_prometheus_can_run() -> None:
    # Grafana variables ($__rate_interval, $job) would not run outside Grafana.
    for board, title, expr in dashboard_queries():
        assert "$" not in expr, f"{board} / {title}: {expr}"


@pytest.mark.parametrize("name", sorted(REQUIRED_METRICS))
def test_dashboards_show_what_they_promise(name: str) -> None:
    board = load_dashboards()[name]
    used = {
        metric
        for panel in iter_panels(board["panels"])
        for target in panel.get("targets", [])
        for metric in metric_names(target.get("expr", ""))
    }
    missing = REQUIRED_METRICS[name] - used
    assert not missing, f"{name} does not show {sorted(missing)}"


def test_kafka_producer_panels_use_only_the_listed_librdkafka_metrics() -> None:
    used = {
        metric
        for _, _, expr in dashboard_queries()
        for metric in metric_names(expr)
        if metric.startswith("steadfast_kafka_producer_")
    }
    assert used <= PRODUCER_METRICS, sorted(used - PRODUCER_METRICS)


# --------------------------------------------------------------------------- names exist


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, status) (rate(a_seconds_bucket{status=~"5..|x"}'
        "[5m]))) / ignoring(le) group_left sum(b_total offset 5m) or on() vector(0) > bool 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}
    assert metric_names('up{job="x"} == 0') == {"up"}


def _unexported(queries: list[tuple[str, str]]) -> str:
    """A report of metric names no process defines, with where each is used ("" if none)."""
    exported = exported_metric_names()
    missing: dict[str, set[str]] = {}
    for where, expr in queries:
        for name in metric_names(expr):
            if not is_exported(name, exported):
                missing.setdefault(name, set()).add(where)
    return "\n".join(
        f"  {name}  (used by: {'; '.join(sorted(where))})"
        for name, where in sorted(missing.items())
    )


def test_every_dashboard_metric_is_exported_by_the_code() -> None:
    missing = _unexported(
        [(f"{board} / {title}", expr) for board, title, expr in dashboard_queries()]
    )
    assert not missing, f"dashboard metrics not defined in services/, retry/, outbox/:\n{missing}"


def test_every_alert_rule_metric_is_exported_by_the_code() -> None:
    missing = _unexported(alert_rule_queries())
    assert not missing, f"alert rule metrics not defined in the code:\n{missing}"


def test_rule_unit_tests_feed_real_metric_names() -> None:
    # Otherwise the promtool tests could pass on series no process ever exports.
    tests = yaml.safe_load(RULES_TEST.read_text())
    series = [
        (case["name"], item["series"].split("{", 1)[0])
        for case in tests["tests"]
        for item in case.get("input_series", [])
    ]
    missing = _unexported(series)
    assert not missing, f"alerts_test.yml feeds names the code does not define:\n{missing}"


# --------------------------------------------------------------------------- PromQL syntax


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard_queries",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, _, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
