"""End-to-end harness: the real processes, started by the same launcher as `make run`.

`stack_factory(...)` runs `steadfast-local run --state-dir <tmp>` as a subprocess against
the session infrastructure of tests/conftest.py: a fresh migrated database from
`make_database()` and, by default, the session broker with a topic and consumer group of
its own (so stacks never read each other's events). `broker="kafka"|"noida"` gives the
stack a private broker a test may stop or kill; `broker="launcher"` lets the launcher
start its own Apache Kafka in the state dir, as `make run` does (and `own_postgres=True`
its own embedded PostgreSQL). It waits for endpoints.json
to say `"ready": true` (for this launcher's pid) and returns a `Stack`. Every failure
message carries the tail of the launcher's output. Teardown always stops the stack, and
kills whatever a failed stop left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from local import infra
from local.reaper import RUN_ID_VARIABLE, tagged

LAUNCHER = Path(sys.executable).parent / "steadfast-local"
READY_TIMEOUT = float(os.environ.get("STEADFAST_TEST_STACK_READY_TIMEOUT", "60"))
STOP_TIMEOUT = 10.0
SERVICES = {"api": "reservation_api", "warehouse": "warehouse_mock", "prometheus": "prometheus"}


class Stack:
    """A running launcher, its endpoints and helpers to drive and break it."""

    def __init__(self, process: subprocess.Popen[bytes], state_dir: Path, log_path: Path) -> None:
        self.process = process
        self.state_dir = state_dir
        self.log_path = log_path
        self.endpoints_path = state_dir / "run" / "endpoints.json"
        self.endpoints: dict[str, Any] = {}
        self.exit_code: int | None = None
        self._http = httpx.Client(timeout=10.0, trust_env=False)

    # -- what it serves ---------------------------------------------------------------------

    @property
    def admin_token(self) -> str:
        return str(self.endpoints["admin_token"])

    @property
    def database_url(self) -> str:
        return str(self.endpoints["database_url"])

    @property
    def pids(self) -> dict[str, int]:
        """Child pids by process name (`consumer-2`), re-read from endpoints.json."""
        return {name: int(pid) for name, pid in self.read_endpoints().get("pids", {}).items()}

    def url(self, service: str, path: str = "") -> str:
        base = self.endpoints.get(SERVICES.get(service, service))
        assert base, f"{service} is not part of this stack{self.output_tail()}"
        return f"{base}{path}"

    def request(self, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}", **kwargs.pop("headers", {})}
        return self._http.request(method, self.url(service, path), headers=headers, **kwargs)

    def get(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", service, path, **kwargs)

    def post(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", service, path, **kwargs)

    def put(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", service, path, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def read_endpoints(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(self.endpoints_path.read_text())
            if data.get("launcher_pid") == self.process.pid:
                self.endpoints = data
        return self.endpoints

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.read_endpoints().get("ready"):
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"launcher exited with {self.process.returncode} before the stack was "
                    f"ready{self.output_tail()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"stack not ready within {timeout:.0f}s{self.output_tail()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` (kill -9 by default) to one child; returns its pid."""
        pid = self.pids.get(name)
        assert pid, f"no process {name!r}; running: {sorted(self.pids)}{self.output_tail()}"
        os.kill(pid, sig)
        return pid

    def wait_exit(self, timeout: float) -> int:
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"launcher still running {timeout:.0f}s later{self.output_tail()}"
            ) from None
        return self.exit_code

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM the launcher; assert it exits 0 within `timeout`. Returns the seconds taken."""
        self.read_endpoints()
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        took = time.monotonic() - started
        assert code == 0, f"launcher exited with {code} on SIGTERM{self.output_tail()}"
        return took

    def run_id(self) -> str:
        """The launcher's STEADFAST_RUN_ID, read from a child's environment."""
        for pid in self.pids.values():
            with contextlib.suppress(OSError):
                for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    name, _, value = entry.decode(errors="replace").partition("=")
                    if name == RUN_ID_VARIABLE:
                        return value
        raise AssertionError(f"no child carries {RUN_ID_VARIABLE}{self.output_tail()}")

    def tagged_pids(self) -> set[int]:
        """Every live process started under this launcher (what its reaper would stop)."""
        return set(tagged(self.run_id(), exclude=set()))

    def owned_pids(self) -> dict[str, int]:
        """Every pid the launcher reported: children and the broker it started."""
        data = self.endpoints
        pids = {name: int(pid) for name, pid in data.get("pids", {}).items()}
        pids.update({name: int(pid) for name, pid in data.get("infra_pids", {}).items()})
        return pids

    def force_kill(self) -> None:
        """Last resort after a failed stop: nothing may outlive the test."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for pid in self.owned_pids().values():
            if self.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # each child leads its own session

    @staticmethod
    def pid_alive(pid: int) -> bool:
        """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def output_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- launcher output (tail) ---\n" + "\n".join(text)

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def stack_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_database: Callable[[], str],
    broker_factory: Callable[..., infra.AnyBroker],
) -> Iterator[Callable[..., Stack]]:
    assert LAUNCHER.exists(), f"{LAUNCHER} missing: install the project into this venv"
    stacks: list[Stack] = []

    def start(
        *,
        broker: str | None = None,
        only: Iterable[str] | None = None,
        scale: Mapping[str, int] | None = None,
        commands: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        prometheus: bool = False,
        own_postgres: bool = False,
        args: Iterable[str] = (),
        wait: bool = True,
    ) -> Stack:
        """Start a stack. `env` adds or overrides STEADFAST_* (e.g. warehouse faults)."""
        n = len(stacks)
        state_dir = tmp_path / f"stack{n}"
        state_dir.mkdir()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("STEADFAST_")}
        if not own_postgres:
            child_env["STEADFAST_DATABASE_URL"] = make_database()
        if broker is None:
            suffix = uuid.uuid4().hex[:8]
            child_env["STEADFAST_KAFKA_BOOTSTRAP_SERVERS"] = request.getfixturevalue(
                "kafka_bootstrap"
            )
            child_env["STEADFAST_KAFKA__TOPIC"] = f"reservations.order-events.{suffix}"
            child_env["STEADFAST_KAFKA__CONSUMER_GROUP"] = f"steadfast-reservations-{suffix}"
        elif broker != "launcher":
            child_env["STEADFAST_KAFKA_BOOTSTRAP_SERVERS"] = broker_factory(broker).bootstrap
        child_env.update(env or {})
        argv = [str(LAUNCHER), "run", "--state-dir", str(state_dir), *args]
        if only is not None:
            argv += ["--only", ",".join(only)]
        argv += [f"--scale={name}={count}" for name, count in (scale or {}).items()]
        argv += [f"--command={name}={cmd}" for name, cmd in (commands or {}).items()]
        if not prometheus:
            argv.append("--no-prometheus")
        log_path = tmp_path / f"stack{n}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                argv, env=child_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        stack = Stack(process, state_dir, log_path)
        stacks.append(stack)
        if wait:
            stack.wait_ready()
        return stack

    yield start

    problems = []
    for stack in stacks:
        try:
            if stack.process.poll() is None:
                stack.stop()
        except AssertionError as exc:
            problems.append(str(exc))
            stack.force_kill()
        finally:
            stack.close()
    assert not problems, "\n\n".join(problems)
