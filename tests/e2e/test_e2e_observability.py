"""Observability proven live: one faulty run of the whole stack, then every Grafana panel's
PromQL against the real Prometheus that scraped it, every alert rule's expression, and
every Kibana saved search against that run's JSON logs loaded into noida-db's ES-API
endpoint through our index template and ingest pipeline (elk/elasticsearch).

The run: warehouse failures (429/503) at a rate the retries mostly absorb, with few enough
attempts (3) that some orders go DEAD; an outage long enough for the breaker to open, then
recovery (it closes again); out-of-stock SKUs that end REJECTED; one audited admin call.

Figures for the closing note go to results/observability-live.json and are printed (-s).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from local import infra
from local.infra import libpq_url
from tests.observability_queries import (
    INDEX_TEMPLATE,
    PROMETHEUS_BUILTIN_METRICS,
    ROOT,
    alert_rule_queries,
    dashboard_queries,
    kql_to_dsl,
    metric_names,
    saved_search_queries,
    template_field_types,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INGEST_PIPELINE = ROOT / "elk" / "elasticsearch" / "ingest-pipeline.json"
PIPELINE_NAME = "steadfast-logs"  # the index template's default_pipeline
TEMPLATE_NAME = "steadfast-logs"
RESULTS = ROOT / "results" / "observability-live.json"

FINAL = ("RESERVED", "REJECTED", "DEAD", "CANCELLED")
WAVE_FAULTY = 160  # under random 429/503
WAVE_OUTAGE = 60  # placed while the warehouse is down
WAVE_OOS = 20  # out-of-stock SKUs: REJECTED
WAVE_AFTER = 60  # after recovery, failures still on
WAVE_PROBES = 10  # placed once the warehouse is back: a half-open breaker needs calls to probe
TOTAL = WAVE_FAULTY + WAVE_OUTAGE + WAVE_OOS + WAVE_AFTER + WAVE_PROBES

FAULTS = {"failure_rate": 0.4, "status_codes": [429, 503], "retry_after_seconds": 1}
FAST_ENV = {
    # A 100% failure window (the outage) opens it; 40% random failures (almost) never do.
    "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "0.8",
    "STEADFAST_BREAKER__WINDOW_SECONDS": "3",
    "STEADFAST_BREAKER__MIN_CALLS": "10",
    "STEADFAST_BREAKER__OPEN_SECONDS": "2",
    "STEADFAST_BREAKER__SYNC_INTERVAL_SECONDS": "0.1",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.2",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "1",
    "STEADFAST_RETRY__JITTER": "0.1",
    # 0.4^3: about 6% of the orders that meet the faults end DEAD.
    "STEADFAST_RETRY__MAX_ATTEMPTS": "3",
    "STEADFAST_INTERVAL_SECONDS": "0.3",
    "STEADFAST_REDRIVE_RATE_PER_SECOND": "200",
    "STEADFAST_REDRIVE_BURST": "50",
    "STEADFAST_ALERTS_INTERVAL_SECONDS": "2",
    # increase() extrapolates a series' last sample to the query time: up to one scrape
    # interval, which is a large share of a run this short at the default 5 s (the DEAD (1h)
    # stat read 182 for 122 DEAD orders once). At 1 s that share stays small.
    "STEADFAST_LOCAL_SCRAPE_INTERVAL": "1s",
    # librdkafka statistics (the producer panels) every second instead of every 15 s.
    "STEADFAST_PRODUCER_STATS_INTERVAL_SECONDS": "1",
}


# --------------------------------------------------------------------------- ES-API endpoint


@dataclass
class SearchEndpoint:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture
def search_endpoint(tmp_path: Path) -> Iterator[SearchEndpoint]:
    """noida-db with only its Elasticsearch API, on a free loopback port, private data dir."""
    exe = shutil.which("noida-db") or str(Path(sys.executable).parent / "noida-db")
    port = infra.free_port()
    data_dir = tmp_path / "es-data"
    data_dir.mkdir()
    log_path = tmp_path / "es.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [
                *(exe, "start", "--data-dir", str(data_dir), "--host", infra.LOOPBACK),
                *("--only", "elasticsearch", "--elasticsearch-port", str(port)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = SearchEndpoint(f"http://{infra.LOOPBACK}:{port}", process, log_path)
    try:
        infra.wait_for_port(infra.LOOPBACK, port, 20, "noida-db elasticsearch")
        yield endpoint
    finally:
        # The console script is a wrapper that does not forward signals: stop the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# --------------------------------------------------------------------------- driving the run


def _place(stack: Stack, start: int, n: int, sku: Callable[[int], str]) -> list[str]:
    def one(i: int) -> str:
        response = stack.post(
            "api",
            "/orders",
            json={"customer_id": f"obs-{i % 13}", "items": [{"sku": sku(i), "quantity": 1}]},
            headers={"Idempotency-Key": f"obs-{i}"},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(one, range(start, start + n)))


def _statuses(stack: Stack) -> dict[str, int]:
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall()
    return {status: int(count) for status, count in rows}


def _wait(what: str, check: Callable[[], bool], timeout: float, stack: Stack) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        assert stack.process.poll() is None, f"launcher exited{stack.output_tail()}"
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}\n{_diagnosis(stack)}"
        f"{stack.output_tail(20)}"
    )


def _diagnosis(stack: Stack) -> str:
    """What a stuck run looks like from outside: statuses, retry rows, consumer gauges."""
    lines = [f"order statuses: {_statuses(stack)}", f"retry rows: {_retry_rows(stack)}"]
    lines += [f"{sample} {value:g}" for sample, value in _consumer_gauges(stack).items()]
    return "\n".join(lines) + "\n"


class _Settled:
    """True once every order is final, or once nothing can move any more: consumer lag 0,
    nothing in flight, no retry row waiting, and the statuses unchanged for 3 s."""

    QUIET_SECONDS = 3.0

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.statuses: dict[str, int] = {}
        self.since = time.monotonic()

    def __call__(self) -> bool:
        statuses = _statuses(self.stack)
        if statuses != self.statuses:
            self.statuses, self.since = statuses, time.monotonic()
        if sum(n for status, n in statuses.items() if status in FINAL) == TOTAL:
            return True
        if time.monotonic() - self.since < self.QUIET_SECONDS:
            return False
        gauges = _consumer_gauges(self.stack)
        busy = _retry_rows(self.stack)
        waiting = busy.get("PENDING", 0) + busy.get("IN_PROGRESS", 0)
        return bool(gauges) and not any(gauges.values()) and not waiting


def _retry_rows(stack: Stack) -> dict[str, int]:
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        rows = conn.execute("SELECT state, count(*) FROM retry_messages GROUP BY state").fetchall()
    return {state: int(count) for state, count in rows}


def _consumer_gauges(stack: Stack) -> dict[str, float]:
    """Lag, in-flight and paused samples of every consumer, from its /metrics."""
    gauges: dict[str, float] = {}
    for name, url in stack.endpoints.get("metrics", {}).items():
        if not name.startswith("consumer"):
            continue
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(url, timeout=3, trust_env=False).text
            for line in text.splitlines():
                if line.startswith("steadfast_consumer_"):
                    sample, _, value = line.rpartition(" ")
                    gauges[f"{name} {sample}"] = float(value)
    return gauges


def _set_faults(stack: Stack, faults: dict[str, Any]) -> None:
    response = stack.put("warehouse", "/admin/faults", json=faults)
    assert response.status_code == 200, response.text


def _place_until_open(stack: Stack, start: int, n: int) -> list[str]:
    """The outage wave, a few orders at a time until the breaker opens, then the rest.

    Placed all at once, the wave can be over (parked, re-driven, DEAD) inside the breaker's
    window, while that window still holds the successes from before the outage: the failure
    ratio never reaches the threshold and no later call comes to reach it. Spread over a
    window's length, the calls outlive those successes.
    """
    ids: list[str] = []
    chunk = 6
    window = float(FAST_ENV["STEADFAST_BREAKER__WINDOW_SECONDS"])
    while len(ids) < n and _breaker_state(stack) == "CLOSED":
        ids += _place(stack, start + len(ids), min(chunk, n - len(ids)), lambda i: f"SKU-{i % 7}")
        time.sleep(window * chunk / n)
    return ids + _place(stack, start + len(ids), n - len(ids), lambda i: f"SKU-{i % 7}")


def _breaker_state(stack: Stack) -> str:
    response = stack.get("api", "/admin/breaker")
    assert response.status_code == 200, response.text
    return str(response.json()["state"])


# --------------------------------------------------------------------------- Prometheus


def _prom_query(client: httpx.Client, base: str, expr: str, at: float) -> list[dict[str, Any]]:
    response = client.get(f"{base}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
    body = response.json()
    assert response.status_code == 200 and body.get("status") == "success", (
        f"{expr!r}: HTTP {response.status_code} {body}"
    )
    assert body["data"]["resultType"] == "vector", f"{expr!r}: {body['data']['resultType']}"
    return list(body["data"]["result"])


def _finite(series: list[dict[str, Any]]) -> dict[str, float]:
    """label set (as text) -> value, for the series whose value is a finite number."""
    values = {}
    for item in series:
        value = float(item["value"][1])
        if math.isfinite(value):
            labels = ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items()))
            values[labels or "{}"] = value
    return values


# --------------------------------------------------------------------------- logs


def _json_lines(launcher_output: str) -> list[dict[str, Any]]:
    """Every process's JSON log records from honcho's prefixed output.

    honcho prints `HH:MM:SS <name padded> | <line>`; the processes' own lines are JSON
    objects, the launcher's and Prometheus's are not.
    """
    records = []
    for line in launcher_output.splitlines():
        _, sep, rest = line.partition("| ")
        if not sep or not rest.startswith("{"):
            continue
        try:
            record = json.loads(rest)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "@timestamp" in record:
            records.append(record)
    return records


def _daily_index(timestamp: str) -> str:
    """Logstash's index name for an event: steadfast-logs-YYYY.MM.dd (UTC)."""
    return f"steadfast-logs-{timestamp[:10].replace('-', '.')}"


def _es(client: httpx.Client, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    response = client.request(method, url, **kwargs)
    assert response.status_code < 300, f"{method} {url}: {response.status_code} {response.text}"
    return dict(response.json())


def _bulk_load(client: httpx.Client, base: str, records: list[dict[str, Any]]) -> int:
    """Bulk-create the records into their daily index (through the default pipeline)."""
    loaded = 0
    for start in range(0, len(records), 1000):
        chunk = records[start : start + 1000]
        body = "".join(
            json.dumps({"create": {"_index": _daily_index(r["@timestamp"])}})
            + "\n"
            + json.dumps(r)
            + "\n"
            for r in chunk
        )
        result = _es(
            client,
            "POST",
            f"{base}/_bulk",
            content=body.encode(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        failed = [i for i in result["items"] if next(iter(i.values())).get("status", 500) >= 300]
        assert not result["errors"] and not failed, f"bulk errors: {failed[:3]}"
        loaded += len(chunk)
    _es(client, "POST", f"{base}/steadfast-logs-*/_refresh")
    return loaded


def _search(
    client: httpx.Client, base: str, query: dict[str, Any], *, size: int = 0, **extra: Any
) -> dict[str, Any]:
    body = {"query": query, "size": size, "track_total_hits": True, **extra}
    return _es(client, "POST", f"{base}/steadfast-logs-*/_search", json=body)


def _total(result: dict[str, Any]) -> int:
    total = result["hits"]["total"]
    return int(total["value"] if isinstance(total, dict) else total)


# --------------------------------------------------------------------------- the test


def test_every_panel_alert_and_saved_search_answers_from_a_live_faulty_run(
    stack_factory: Callable[..., Stack], search_endpoint: SearchEndpoint
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (make test installs it: apt-get install)")
    started = time.monotonic()
    stack = stack_factory(prometheus=True, env=FAST_ENV)
    prom = stack.endpoints.get("prometheus")
    assert prom, f"the launcher started no Prometheus{stack.output_tail()}"
    run_from = time.time()
    timings: dict[str, float] = {"stack_ready": time.monotonic() - started}
    # Every target scraped once before any traffic, so that every counter's first sample
    # is its starting value and increase()/rate() see the whole run.
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        timings["first_scrape"] = _wait(
            "a first scrape of every target",
            lambda: (
                _finite(_prom_query(client, prom, "count(up == 1)", time.time())).get("{}")
                == len(stack.endpoints["metrics"])
            ),
            20,
            stack,
        )

    # 1. Random 429/503: retries, some DEAD.
    _set_faults(stack, FAULTS)
    ids = _place(stack, 0, WAVE_FAULTY, lambda i: f"SKU-{i % 7}")
    # 2. An outage: the breaker opens, consumers pause; orders placed meanwhile wait in Kafka.
    _set_faults(stack, {**FAULTS, "outage": True})
    ids += _place_until_open(stack, WAVE_FAULTY, WAVE_OUTAGE)
    timings["breaker_open"] = _wait(
        "the breaker to open", lambda: _breaker_state(stack) != "CLOSED", 30, stack
    )
    # 3. Recovery: it half-opens after OPEN_SECONDS, its probes succeed, it closes. (With
    #    40% failures still on, 3 probes fail 78% of the time and it flaps for a while.)
    #    When every outage order already went DEAD, nothing would be left to probe with:
    #    a few orders placed now are the probes.
    _set_faults(stack, {})
    ids += _place(stack, WAVE_FAULTY + WAVE_OUTAGE, WAVE_PROBES, lambda i: f"SKU-{i % 7}")
    timings["breaker_closed"] = _wait(
        "the breaker to close", lambda: _breaker_state(stack) == "CLOSED", 30, stack
    )
    _set_faults(stack, FAULTS)
    # 4. Out-of-stock orders (REJECTED) and more faulty traffic.
    base = WAVE_FAULTY + WAVE_OUTAGE + WAVE_PROBES
    ids += _place(stack, base, WAVE_OOS, lambda i: f"OOS-{i % 3}")
    ids += _place(stack, base + WAVE_OOS, WAVE_AFTER, lambda i: f"SKU-{i % 7}")
    assert len(set(ids)) == TOTAL
    # 5. An audited admin call: a dry-run bulk reprocess of the DEAD rows.
    dry = stack.post("api", "/admin/retries/reprocess", json={"state": ["DEAD"], "dry_run": True})
    assert dry.status_code == 200, dry.text

    settled = _Settled(stack)
    timings["settled"] = _wait(
        f"all {TOTAL} orders final (or the pipeline idle)", settled, 60, stack
    )
    statuses = settled.statuses
    final = sum(n for status, n in statuses.items() if status in FINAL)
    assert statuses.get("RESERVED", 0) > TOTAL // 2, statuses
    assert statuses.get("REJECTED", 0) >= 1, statuses
    assert statuses.get("DEAD", 0) >= 1, statuses
    faults = stack.get("warehouse", "/admin/stats").json()["faults"]

    # Wait until Prometheus has scraped the final counts.
    with httpx.Client(timeout=10.0, trust_env=False) as client:

        def scraped_all() -> bool:
            """The final counts, and an empty retry backlog and consumer lag, scraped."""
            now = time.time()
            for expr, expected in (
                ("sum(steadfast_orders_final_total)", final),
                ('sum(max by (state) (steadfast_retry_rows{state=~"PENDING|IN_PROGRESS"}))', 0),
                ("sum(max by (topic, partition) (steadfast_consumer_lag_messages))", 0),
            ):
                value = _finite(_prom_query(client, prom, expr, now)).get("{}")
                if value != expected:
                    return False
            return True

        timings["scraped"] = _wait("Prometheus to scrape the final counts", scraped_all, 30, stack)
        at = time.time()
        targets = len(stack.endpoints["metrics"])
        panels, alerts, up, problems = _prometheus_checks(client, prom, at, targets)
    problems += _panel_sense(panels, statuses)
    consumer_now = _consumer_gauges(stack)  # to compare with the scraped lag

    # Logs of the same run, all processes, into the ES-API endpoint.
    records = _json_lines(stack.log_path.read_text(errors="replace"))
    stack.stop()  # the run is over; free the cores for the search side
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        searches, journey = _log_checks(client, search_endpoint.url, records)

    if final != TOTAL:
        problems.append(
            f"{TOTAL - final} of {TOTAL} orders never reached a final status although the "
            f"pipeline went idle (consumer lag 0, nothing in flight, no retry row pending): "
            f"{statuses}; their events were committed without being processed"
        )
    timings["total"] = time.monotonic() - started
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {
            "orders": TOTAL,
            "statuses": statuses,
            "lost_orders": TOTAL - final,
            "warehouse_faults": faults,
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "prometheus_window": [run_from, at],
            "log_records": len(records),
            "consumer_gauges_at_query": consumer_now,
        },
        "problems": problems,
        "panels": panels,
        "alert_rules": alerts,
        "targets_up": up,
        "saved_searches": searches,
        "journey": journey,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    _print_report(report)
    # Last, so that the figures above are recorded either way.
    assert not problems, "\n".join(problems)


def _prometheus_checks(
    client: httpx.Client, prom: str, at: float, targets: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float], list[str]]:
    """Every panel's and rule's PromQL at `at`; returns what they gave and what was wrong
    (asserted by the caller once the results are recorded)."""
    # Every target up: one per process (api, warehouse, relay, consumer, scheduler).
    up = _finite(_prom_query(client, prom, "up", at))
    assert len(up) == targets and all(v == 1 for v in up.values()), up

    panels = []
    empty = []
    for board, title, expr in dashboard_queries():
        values = _finite(_prom_query(client, prom, expr, at))
        panels.append({"dashboard": board, "title": title, "expr": expr, "values": values})
        if not values:
            empty.append(f"{board} / {title}: {expr}")

    alerts = []
    missing = []
    for name, expr in alert_rule_queries():
        result = _finite(_prom_query(client, prom, expr, at))  # parses and evaluates
        present = {}
        for metric in sorted(metric_names(expr) - (PROMETHEUS_BUILTIN_METRICS - {"up"})):
            count = _finite(_prom_query(client, prom, f"count({metric})", at))
            present[metric] = int(count.get("{}", 0))
            if not present[metric]:
                missing.append(f"{name}: {metric}")
        alerts.append({"alert": name, "firing_now": bool(result), "value": result, **present})
    problems = [f"panel without a finite series: {e}" for e in empty]
    problems += [f"alert rule reads a metric with no series: {m}" for m in missing]
    return panels, alerts, up, problems


def _panel_sense(panels: list[dict[str, Any]], statuses: dict[str, int]) -> list[str]:
    """Beyond "a finite number": what this run must show on a few panels."""

    def total(title: str, expr_part: str = "") -> float:
        return sum(
            sum(p["values"].values())
            for p in panels
            if p["title"] == title and expr_part in p["expr"]
        )

    checks = [
        ("Orders placed /s > 0", total("Orders placed /s") > 0),
        ("Reserved /s > 0", total("Reserved /s") > 0),
        (
            f"DEAD (1h) {total('DEAD (1h)'):g} ~ {statuses.get('DEAD', 0)} orders DEAD",
            abs(total("DEAD (1h)") - statuses.get("DEAD", 0))
            <= max(2, statuses.get("DEAD", 0) / 4),
        ),
        ("Breaker transitions shows the opening", total("Breaker transitions") > 0),
        ("Failures by class > 0", total("Failures by class", "consumed") > 0),
        ("Warehouse mock: injected faults > 0", total("Warehouse mock: injected faults") > 0),
        ("Retry backlog == 0 at the end", total("Retry backlog", "PENDING|IN_PROGRESS") == 0),
    ]
    return [f"panel shows the wrong thing: {name}" for name, ok in checks if not ok]


def _log_checks(
    client: httpx.Client, base: str, records: list[dict[str, Any]]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    assert records, "no JSON log lines in the launcher output"
    _es(
        client,
        "PUT",
        f"{base}/_ingest/pipeline/{PIPELINE_NAME}",
        content=INGEST_PIPELINE.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    _es(
        client,
        "PUT",
        f"{base}/_index_template/{TEMPLATE_NAME}",
        content=INDEX_TEMPLATE.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    loaded = _bulk_load(client, base, records)
    everything = _total(_search(client, base, {"match_all": {}}))
    assert everything == loaded, (everything, loaded)

    counts: dict[str, int] = {}
    by_title = {}
    for title, _kql, dsl in saved_search_queries():
        counts[title] = _total(_search(client, base, dsl))
        by_title[title.removeprefix("steadfast: ")] = dsl

    assert counts["steadfast: journey of one order"] > 0
    assert counts["steadfast: retries and dead letters"] > 0
    assert counts["steadfast: breaker transitions"] >= 2, counts  # open, then closed
    assert counts["steadfast: admin actions"] >= 1, counts
    assert counts["steadfast: errors by class"] > 0, counts

    errors = _search(
        client,
        base,
        by_title["errors by class"],
        aggs={"classes": {"terms": {"field": "error.type", "size": 20}}},
    )
    classes = {b["key"]: b["doc_count"] for b in errors["aggregations"]["classes"]["buckets"]}
    assert len(classes) > 1, classes
    counts["errors by class: error.type buckets"] = len(classes)

    transitions = _search(
        client, base, by_title["breaker transitions"], size=50, sort=[{"@timestamp": "asc"}]
    )
    to_states = [h["_source"]["breaker"]["to_state"] for h in transitions["hits"]["hits"]]
    assert "OPEN" in to_states and "CLOSED" in to_states, to_states

    # The journey of one retried order that ended RESERVED.
    types = template_field_types()
    redriven = _search(
        client,
        base,
        kql_to_dsl("event.action:message_redriven", types),
        size=200,
        sort=[{"@timestamp": "asc"}],
    )
    candidates = [
        h["_source"]["labels"]["order_id"]
        for h in redriven["hits"]["hits"]
        if h["_source"].get("labels", {}).get("order_id")
    ]
    assert candidates, "no message_redriven line names an order"
    # Prefer an order re-driven more than once (parked, rescheduled, re-driven, reserved).
    journey: list[dict[str, Any]] = []
    for order_id in list(dict.fromkeys(candidates))[:40]:
        dsl = kql_to_dsl(f'labels.order_id:"{order_id}"', types)
        hits = _search(client, base, dsl, size=100, sort=[{"@timestamp": "asc"}])["hits"]["hits"]
        steps = [
            {
                "@timestamp": h["_source"]["@timestamp"],
                "service": h["_source"]["service"]["name"],
                "action": h["_source"]["event"]["action"],
                "attempt": h["_source"].get("retry", {}).get("attempt"),
            }
            for h in hits
        ]
        actions = {step["action"] for step in steps}
        if "order_reserved" in actions and not journey:
            journey = steps
        if {"order_reserved", "message_rescheduled"} <= actions:
            journey = steps
            break
    assert journey, f"no re-driven order in {candidates[:5]} ended order_reserved"
    stamps = [j["@timestamp"] for j in journey]
    assert stamps == sorted(stamps), journey
    actions = [j["action"] for j in journey]
    assert actions[0] == "order_placed", journey
    for needed in ("message_parked", "message_redriven", "order_reserved"):
        assert needed in actions, (needed, journey)
    assert actions.index("message_parked") < actions.index("message_redriven"), journey
    counts["journey of the order (hits)"] = len(journey)
    return counts, journey


def _print_report(report: dict[str, Any]) -> None:
    lines = [f"\nobservability live run: {json.dumps(report['run'])}", "", "panels:"]
    for panel in report["panels"]:
        values = panel["values"]
        shown = (
            f"{next(iter(values.values())):.4g}"
            if len(values) == 1
            else "; ".join(f"{k}={v:.4g}" for k, v in list(values.items())[:4])
            + (f" (+{len(values) - 4})" if len(values) > 4 else "")
        )
        lines.append(f"  {panel['dashboard']:<18} | {panel['title'][:44]:<44} | {shown}")
    lines += ["", "alert rules (evaluated; firing now?):"]
    lines += [f"  {a['alert']:<36} {a['firing_now']}" for a in report["alert_rules"]]
    lines += ["", f"targets up: {report['targets_up']}", "", "saved searches (hits):"]
    lines += [f"  {title:<44} {n}" for title, n in report["saved_searches"].items()]
    lines += ["", "journey of one retried order:"]
    lines += [f"  {j['@timestamp']} {j['service']:<22} {j['action']}" for j in report["journey"]]
    print("\n".join(lines))  # noqa: T201
