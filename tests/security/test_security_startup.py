"""No default admin token: the real console scripts refuse to start without one.

Outside explicit dev mode (STEADFAST_DEV_MODE=true) a process with admin routes exits
non-zero with a one-paragraph message naming the variable, no traceback, and nothing of the
other settings (the database URL's password). In dev mode it starts, and its admin routes
still need a token: a random one, never "no auth".
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from local.infra import free_port
from services.reservation.settings import ApiSettings
from services.warehouse_mock.settings import WarehouseMockSettings
from tests.processes import BIN, base_env

PASSWORD = "pw-that-must-not-leak"
SCRIPTS = ["steadfast-api", "steadfast-warehouse"]


def env_without_token(**extra: str) -> dict[str, str]:
    env = base_env(extra)
    del env["STEADFAST_ADMIN_TOKEN"]
    return env


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / script), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_refuses_to_start_without_a_token(script: str) -> None:
    env = env_without_token(
        STEADFAST_DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:1/none",
        STEADFAST_PORT="1",
    )
    result = run(script, env, *(["--port", "1"] if script == "steadfast-warehouse" else []))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "STEADFAST_ADMIN_TOKEN is required" in output
    assert "STEADFAST_DEV_MODE" in output
    assert "Traceback" not in output
    assert PASSWORD not in output


@pytest.mark.parametrize("settings_class", [ApiSettings, WarehouseMockSettings])
@pytest.mark.parametrize("token", [None, "", "   "])
def test_settings_refuse_a_missing_or_blank_token(
    settings_class: type[BaseSettings], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if token is not None:
        monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", token)
    monkeypatch.setenv("STEADFAST_DATABASE_URL", f"postgresql://app:{PASSWORD}@db/x")
    with pytest.raises(ValidationError, match="STEADFAST_ADMIN_TOKEN is required") as caught:
        settings_class()
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("settings_class", [ApiSettings, WarehouseMockSettings])
def test_dev_mode_makes_a_random_token_never_none(
    settings_class: type[ApiSettings | WarehouseMockSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEADFAST_DEV_MODE", "true")
    tokens = {settings_class().admin_token for _ in range(2)}
    values = {token.get_secret_value() for token in tokens if token is not None}
    assert len(values) == 2 and all(len(value) >= 24 for value in values)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not healthy: {log.read_text()}")


def start(
    procs: list[subprocess.Popen[bytes]], script: str, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / script), *args], env=env, stdout=out, stderr=out)
    procs.append(proc)
    return proc


def test_warehouse_starts_in_dev_mode_and_still_needs_a_token(
    started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    env = env_without_token(STEADFAST_DEV_MODE="true")
    log = tmp_path / "warehouse.log"
    proc = start(started, "steadfast-warehouse", env, log, "--port", str(port))
    wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
    response = httpx.get(f"http://127.0.0.1:{port}/admin/faults", timeout=5)
    assert response.status_code == 401


@pytest.mark.postgres
def test_api_starts_in_dev_mode_and_still_needs_a_token(
    started: list[subprocess.Popen[bytes]], tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    env = env_without_token(
        STEADFAST_DEV_MODE="true", STEADFAST_DATABASE_URL=database_url, STEADFAST_PORT=str(port)
    )
    log = tmp_path / "api.log"
    proc = start(started, "steadfast-api", env, log)
    wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
    response = httpx.get(f"http://127.0.0.1:{port}/admin/retries", timeout=5)
    assert response.status_code == 401
