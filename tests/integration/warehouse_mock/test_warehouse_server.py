"""The real warehouse mock process, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

TOKEN = "integration-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
REPO_ROOT = Path(__file__).resolve().parents[3]
STARTUP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.base_url = ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def wait_for_health(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not healthy in {STARTUP_SECONDS} s:\n{self.log_path.read_text()}")

    def terminate(self) -> float:
        """SIGTERM, then the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return time.monotonic() - started

    def assert_shut_down_gracefully(self) -> None:
        # uvicorn re-raises the signal once it has shut down, so the status is -SIGTERM.
        assert self.process.returncode in (0, -signal.SIGTERM)
        messages = [record["message"] for record in self.log_records()]
        assert "Application shutdown complete." in messages, messages


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def start(port: str) -> Server:
        env = {
            name: value for name, value in os.environ.items() if not name.startswith("STEADFAST_")
        }
        env.update(
            STEADFAST_ADMIN_TOKEN=TOKEN,
            STEADFAST_WAREHOUSE_STOCK='{"SKU-A": 5}',
            STEADFAST_WAREHOUSE_SHUTDOWN_GRACE_SECONDS="3",
        )
        log_path = tmp_path / f"server-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.warehouse_mock", "--port", port],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(process, log_path)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_timeout_then_retry_with_the_same_key_reserves_once(
    start_server: Callable[[str], Server],
) -> None:
    port = free_port()
    server = start_server(str(port))
    server.base_url = f"http://127.0.0.1:{port}"
    server.wait_for_health()
    order = {"order_id": "order-it-1", "items": [{"sku": "SKU-A", "quantity": 2}]}
    headers = {"Idempotency-Key": "order-it-1"}

    with httpx.Client(base_url=server.base_url, timeout=1.0) as client:
        response = client.put("/admin/faults", json={"timeout_rate": 1.0}, headers=ADMIN)
        assert response.status_code == 200
        assert response.json()["active"]["timeout_delay_seconds"] == 30
        with pytest.raises(httpx.ReadTimeout):
            client.post("/reservations", json=order, headers=headers)

        assert client.put("/admin/faults", json={}, headers=ADMIN).status_code == 200
        retry = client.post("/reservations", json=order, headers=headers)
        assert retry.status_code == 200
        assert retry.json()["status"] == "RESERVED"

        stats = client.get("/admin/stats", headers=ADMIN).json()
        assert stats["reservations"] == 1
        assert stats["duplicates_deflected"] == 1
        assert stats["duplicate_reservations"] == 0
        assert stats["faults"]["timeout"] == 1
        assert stats["stock"]["levels"]["SKU-A"] == 3
        metrics = client.get("/metrics").text
        assert 'steadfast_warehouse_mock_faults_total{kind="timeout"} 1.0' in metrics

    # The timed-out request is still held on the server; shutdown must not wait 30 s for it.
    assert server.terminate() < 10
    server.assert_shut_down_gracefully()
    records = server.log_records()
    assert {record["service.name"] for record in records} == {"warehouse-mock"}
    made = [r for r in records if r.get("event.action") == "reservation_made"]
    assert [r["labels.order_id"] for r in made] == ["order-it-1"]
    actions = {r.get("event.action") for r in records}
    assert {"fault_injected", "duplicate_deflected", "faults_configured"} <= actions


def test_port_zero_binds_a_free_port(start_server: Callable[[str], Server]) -> None:
    server = start_server("0")
    deadline = time.monotonic() + STARTUP_SECONDS
    bound = None
    while bound is None and time.monotonic() < deadline:
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", server.log_path.read_text())
        bound = int(found.group(1)) if found else None
        time.sleep(0.1)
    assert bound, server.log_path.read_text()
    assert bound != 0
    server.base_url = f"http://127.0.0.1:{bound}"
    server.wait_for_health()
    assert server.terminate() < 10
    server.assert_shut_down_gracefully()
