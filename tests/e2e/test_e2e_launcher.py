"""The launcher behind `make run`: endpoints file, serving, clean stop, a child's death."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.processes import metric_sum

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is borrowed here
    from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

StackFactory = Callable[..., "Stack"]

_STAND_IN = """
import http.server, os, signal
if {ignore_sigterm}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
port = int(os.environ["STEADFAST_METRICS_PORT"])
http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever()
"""


_CHATTY = """
import http.server, os, sys, threading
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
port = int(os.environ["STEADFAST_METRICS_PORT"])
server = http.server.HTTPServer(("127.0.0.1", port), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
line = '{"message": "poison parked", "event.action": "message_dead"}' + " " * 200 + "\\n"
while True:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


def stand_in(*, ignore_sigterm: bool = False) -> str:
    """A stand-in for relay/consumer/scheduler: serves 200 on its metrics port, as they do."""
    code = _STAND_IN.format(ignore_sigterm=ignore_sigterm)
    return f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def chatty_stand_in() -> str:
    """A stand-in that logs as fast as it can, like a consumer parking a burst of poison."""
    return f"exec {shlex.quote(sys.executable)} -c {shlex.quote(_CHATTY)}"


def _wait_gone(stack: Stack, pids: dict[str, int], timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [f"{name} (pid {pid})" for name, pid in pids.items() if stack.pid_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat_path.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(stat_path.parent.name))
    return tree


def _descendants(roots: set[int]) -> set[int]:
    tree, found, todo = _children(), set(), list(roots)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() or str(pid)
    except OSError:
        return str(pid)


def test_endpoints_file_is_private_and_names_everything(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse"])
    info = os.stat(stack.endpoints_path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stack.endpoints_path.parent).st_mode) == 0o700
    data = stack.endpoints
    assert data["ready"] is True
    assert data["launcher_pid"] == stack.process.pid
    assert len(data["admin_token"]) >= 32  # generated: secrets.token_urlsafe(32)
    assert data["warehouse_mock"].startswith("http://127.0.0.1:")
    assert data["reservation_api"] is None  # not asked for
    assert data["database_url"] == stack.database_url
    assert data["kafka_bootstrap_servers"].startswith("127.0.0.1:")
    assert set(data["metrics"]) == {"warehouse-1"}
    assert set(data["pids"]) == {"warehouse-1"}
    # No temp files left behind by the atomic rewrites.
    assert sorted(p.name for p in stack.endpoints_path.parent.iterdir()) == [
        "endpoints.json",
        "owned.json",
    ]


def test_serves_the_warehouse_mock_behind_the_admin_token(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse"])
    assert stack.get("warehouse", "/health").status_code == 200
    assert stack.get("warehouse", "/admin/stats").status_code == 200
    unauthenticated = httpx.get(stack.url("warehouse", "/admin/stats"), trust_env=False)
    assert unauthenticated.status_code == 401
    metrics = httpx.get(stack.endpoints["metrics"]["warehouse-1"], trust_env=False)
    assert metrics.status_code == 200


def test_an_exported_admin_token_is_used_as_is(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse"], env={"STEADFAST_ADMIN_TOKEN": "given-token-123"})
    assert stack.admin_token == "given-token-123"
    assert stack.get("warehouse", "/admin/faults").status_code == 200


def test_sigterm_stops_every_child_and_the_broker_within_10s(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(
        broker="launcher",
        only=["warehouse", "relay"],
        scale={"relay": 2},
        # A stand-in that ignores SIGTERM: honcho must SIGKILL it, still inside the 10 s.
        commands={"relay": stand_in(ignore_sigterm=True)},
    )
    owned = stack.owned_pids()
    assert set(owned) == {"warehouse-1", "relay-1", "relay-2", "kafka-1", "reaper"}
    assert all(stack.pid_alive(pid) for pid in owned.values())

    took = stack.stop()

    assert took < 10, f"stop took {took:.1f}s"
    assert _wait_gone(stack, owned, timeout=1) == []
    assert not stack.endpoints_path.exists()
    assert "all processes stopped" in stack.output_tail()


def test_sigterm_stops_within_10s_while_children_flood_the_terminal(
    stack_factory: StackFactory,
) -> None:
    """honcho prints from its SIGTERM handler; one landing inside a write used to hang the
    launcher for good (a plain lock around the printer), most often under heavy output."""
    for attempt in range(4):
        stack = stack_factory(
            only=["consumer", "relay"],
            scale={"consumer": 2},
            commands={"consumer": chatty_stand_in(), "relay": chatty_stand_in()},
        )
        owned = stack.owned_pids()
        time.sleep(0.5)  # let the flood reach the launcher's printer
        took = stack.stop()
        assert took < 10, f"try {attempt}: stop took {took:.1f}s"
        assert _wait_gone(stack, owned, timeout=1) == [], f"try {attempt}"


def test_a_launcher_killed_with_sigkill_leaves_no_child_behind(
    stack_factory: StackFactory,
) -> None:
    """kill -9 of the launcher: its reaper stops every child, the broker and PostgreSQL."""
    stack = stack_factory(
        broker="launcher",
        own_postgres=True,
        only=["warehouse", "consumer", "relay"],
        commands={"consumer": chatty_stand_in(), "relay": stand_in(ignore_sigterm=True)},
    )
    owned = stack.owned_pids()
    assert {"warehouse-1", "consumer-1", "relay-1", "kafka-1", "reaper"} <= set(owned)
    tagged = stack.tagged_pids()
    assert set(owned.values()) - {owned["reaper"]} <= tagged
    # Everything that descends from the launcher (honcho's relay processes, each child, the
    # Kafka JVM), PostgreSQL's postmaster (pg_ctl daemonizes it) and its workers.
    everything = _descendants({stack.process.pid} | tagged) | tagged
    postmaster = [pid for pid in tagged if _command(pid).endswith("postgres")]
    assert postmaster, f"no postgres among {[_command(pid) for pid in tagged]}"
    assert len(everything) >= len(owned) + 5, [_command(pid) for pid in everything]

    stack.process.kill()
    stack.wait_exit(5)

    # The reaper's grace is 4 s before SIGKILL (the relay here ignores SIGTERM).
    left = _wait_gone(
        stack, {f"{_command(pid)}#{pid}": pid for pid in everything | {owned["reaper"]}}, timeout=10
    )
    assert left == [], f"left running after kill -9 of the launcher: {left}"
    stack.exit_code = -9


def test_a_child_that_dies_stops_the_stack_and_is_named(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse", "consumer"], commands={"consumer": stand_in()})
    pids = stack.pids
    stack.kill("consumer-1")

    code = stack.wait_exit(10)

    assert code == 1, stack.output_tail()
    assert "process consumer-1 died" in stack.output_tail()
    assert _wait_gone(stack, pids) == []


def test_scale_names_instances_and_gives_each_a_metrics_port(stack_factory: StackFactory) -> None:
    stack = stack_factory(
        only=["consumer", "scheduler"],
        scale={"consumer": 2},
        commands={role: stand_in() for role in ("consumer", "scheduler")},
    )
    metrics = stack.endpoints["metrics"]
    assert set(metrics) == {"consumer-1", "consumer-2", "scheduler-1"}
    assert len({url for url in metrics.values()}) == 3
    assert set(stack.pids) == set(metrics)


@pytest.mark.skipif(
    shutil.which("prometheus") is None and os.environ.get("CI") != "true",
    reason="prometheus not installed (make test installs it as root; CI must have it)",
)
def test_prometheus_scrapes_the_processes(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse"], prometheus=True)
    config = stack.state_dir / "run" / "prometheus.yml"
    check = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0.0.0.0" not in config.read_text()
    deadline = time.monotonic() + 30
    health = None
    while time.monotonic() < deadline:
        targets = stack.get("prometheus", "/api/v1/targets").json()["data"]["activeTargets"]
        health = {t["labels"]["instance_id"]: t["health"] for t in targets}
        if health.get("warehouse-1") == "up":
            break
        time.sleep(0.5)
    assert health == {"warehouse-1": "up"}, stack.output_tail()


def test_bad_options_fail_fast_with_a_clear_message(stack_factory: StackFactory) -> None:
    stack = stack_factory(scale={"warehouse": 2}, wait=False)
    assert stack.wait_exit(30) == 2
    assert "only api, consumer, relay, scheduler run more than once" in stack.output_tail()


def test_api_replicas_share_one_port_and_each_serves_its_own_metrics(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(only=["api"], scale={"api": 2})
    metrics = stack.endpoints["metrics"]
    assert set(metrics) == {"api-1", "api-2"} == set(stack.pids)
    assert len(set(metrics.values())) == 2
    orders = 60
    for i in range(orders):
        # A connection of its own each time: the kernel picks a replica per connection.
        response = httpx.post(
            stack.url("api", "/orders"),
            json={"customer_id": "replicas", "items": [{"sku": "SKU-1", "quantity": 1}]},
            headers={"Idempotency-Key": f"replicas-{i}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
    placed = {
        name: metric_sum(url, "steadfast_orders_placed_total") for name, url in metrics.items()
    }
    assert sum(placed.values()) == orders, placed
    assert all(count > 0 for count in placed.values()), f"one replica served nothing: {placed}"


def test_sighup_from_a_closed_terminal_stops_cleanly(stack_factory: StackFactory) -> None:
    stack = stack_factory(only=["warehouse"])
    pids = stack.pids
    stack.process.send_signal(signal.SIGHUP)
    assert stack.wait_exit(10) == 0, stack.output_tail()
    assert _wait_gone(stack, pids) == []
