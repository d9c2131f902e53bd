"""The relay process's composition root, run as a real process: settings in, /metrics
served, rows published, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from outbox_support import insert_events, make_event, unpublished, wait_until
from sqlalchemy import Engine

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

RUN = (
    "from services.common.logs import configure_logging;"
    "configure_logging('outbox-relay');"
    "from services.reservation.relay_process import run_relay;"
    "from services.reservation.settings import RelaySettings;"
    "run_relay(RelaySettings())"
)


class LogLines:
    """The process's JSON log lines, read on a thread so waits stay bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=self._pump, args=(stdout,), daemon=True).start()

    def _pump(self, stdout: Any) -> None:
        for line in stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"message": line.strip()})

    def wait_for(self, action: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for record in self.seen:
            if record.get("event.action") == action:
                return record
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                record = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(record)
            if record.get("event.action") == action:
                return record
        raise AssertionError(f"no {action!r} log within {timeout}s; saw {self.seen[-5:]}")


@pytest.fixture
def relay_process(database_url: str, kafka_bootstrap: str) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "STEADFAST_DATABASE_URL": database_url,
        "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STEADFAST_METRICS_PORT": "0",
        "STEADFAST_POLL_INTERVAL_SECONDS": "0.2",
        "STEADFAST_INSTANCE_ID": "relay-under-test",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_the_relay_process_publishes_serves_metrics_and_stops_on_sigterm(
    relay_process: subprocess.Popen[str],
    engine: Engine,
    topic_factory: Callable[..., str],
) -> None:
    logs = LogLines(relay_process)
    listening = logs.wait_for("metrics_listening", 30)
    port = int(listening["url.port"])
    assert port > 0
    topic = topic_factory("outbox-process", partitions=2)
    insert_events(engine, [make_event(topic, f"k{i}", 0) for i in range(3)])
    wait_until(lambda: unpublished(engine) == 0, 20, "the process to publish")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    wait_until(lambda: "steadfast_outbox_published_total 3.0" in scrape(), 10, "metrics")
    body = scrape()
    for name in (
        "steadfast_outbox_pending_rows",
        "steadfast_outbox_oldest_age_seconds",
        "steadfast_outbox_publish_latency_seconds_bucket",
        "steadfast_outbox_batch_size_bucket",
        "steadfast_kafka_producer_queue_messages",
        "steadfast_kafka_producer_tx_messages",
    ):
        assert name in body, name
    started = logs.wait_for("outbox_relay_started", 1)
    assert started["owner"].startswith("relay-under-test:")

    relay_process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert relay_process.wait(10) == 0
    assert time.monotonic() - signalled < 3.0
    logs.wait_for("outbox_relay_stopped", 5)
