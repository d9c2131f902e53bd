"""Start steadfast's real processes (console scripts of this venv) for tests.

Every process listens on loopback only, logs JSON to a file the test can read, and is
stopped with SIGTERM (then SIGKILL) when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local.infra import free_port

BIN = Path(sys.executable).parent
TOKEN = "test-admin-token"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEADFAST_")}
    # A crash in native code (SIGSEGV, SIGABRT) leaves the Python stacks in the log.
    env.update(
        {"STEADFAST_ADMIN_TOKEN": TOKEN, "STEADFAST_LOG_LEVEL": "INFO", "PYTHONFAULTHANDLER": "1"}
    )
    env.update(extra or {})
    return env


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    urls: dict[str, str] = field(default_factory=dict)

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM and wait; returns the seconds it took (SIGKILL after `timeout`)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)


def start(name: str, script: str, env: Mapping[str, str], log_dir: Path, *args: str) -> Proc:
    log_path = log_dir / f"{name}.log"
    out = log_path.open("ab")
    process = subprocess.Popen(
        [str(BIN / script), *args], env=dict(env), stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    return Proc(name, process, log_path)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        try:
            if check():
                return
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.1)
    detail = f"\n{proc.name} log tail:\n{proc.tail()}" if proc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


def start_warehouse(log_dir: Path, **faults_env: str) -> Proc:
    port = free_port()
    env = base_env({"STEADFAST_WAREHOUSE_PORT": str(port), **faults_env})
    proc = start("warehouse-mock", "steadfast-warehouse", env, log_dir)
    proc.urls["base"] = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(f"{proc.urls['base']}/health", timeout=1).status_code == 200,
        20,
        "warehouse mock health",
        proc,
    )
    return proc


def metric_sum(metrics_url: str, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` (`x_total`, `x_sum`) whose labels include
    `labels`, on a Prometheus /metrics page; 0 when none is exported yet."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(metrics_url, timeout=5, trust_env=False).text
    return sum(
        s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def postgres_state_dir() -> Iterator[Path]:
    """A home for an embedded PostgreSQL outside pytest's temporary tree.

    The server runs as `nobody`, which needs to traverse every parent of its data dir,
    and each pytest session that starts strips group and other bits from
    /tmp/pytest-of-<user>: a second session (a test run beside another) cut a running
    server off its own files (PANIC: could not open pg_control).
    """
    path = Path(tempfile.mkdtemp(prefix="steadfast-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def assert_reserved_at_most_once(stats: dict[str, Any]) -> None:
    """The warehouse mock's own count: no order had stock reserved for it more than once.

    Counted per order id over every reservation the mock created, whatever its
    reservation key, so a consumer that reserved one order twice (under two keys, or
    after releasing it) is caught; an idempotent repeat of one key creates nothing.
    """
    assert stats["orders_reserved_more_than_once"] == 0, stats
    assert stats["max_reservations_per_order"] <= 1, stats
