"""Settings from the environment, and the command line entry point (uvicorn stubbed out)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from pydantic import ValidationError

from services.warehouse_mock import cli
from services.warehouse_mock.settings import WarehouseMockSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    settings = WarehouseMockSettings()
    assert (settings.host, settings.warehouse_port) == ("127.0.0.1", 8081)
    assert settings.warehouse_stock == {}
    assert settings.warehouse_default_stock == 1_000_000
    assert settings.warehouse_fault_seed == 0
    assert settings.warehouse_faults.failure_rate == 0
    assert settings.log_level == "INFO"


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "STEADFAST_ADMIN_TOKEN": "secret",
        "STEADFAST_WAREHOUSE_PORT": "9099",
        "STEADFAST_WAREHOUSE_STOCK": '{"SKU-1": 4, "SKU-2": 0}',
        "STEADFAST_WAREHOUSE_DEFAULT_STOCK": "50",
        "STEADFAST_WAREHOUSE_FAULT_SEED": "1234",
        "STEADFAST_WAREHOUSE_FAULTS": '{"failure_rate": 0.25, "status_codes": [503]}',
        "STEADFAST_LOG_LEVEL": "debug",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WarehouseMockSettings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "secret"
    assert settings.warehouse_port == 9099
    assert settings.warehouse_stock == {"SKU-1": 4, "SKU-2": 0}
    assert settings.warehouse_default_stock == 50
    assert settings.warehouse_fault_seed == 1234
    assert settings.warehouse_faults.failure_rate == 0.25
    assert settings.warehouse_faults.status_codes == [503]
    assert settings.log_level == "DEBUG"


def test_fault_knobs_can_be_set_one_variable_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    monkeypatch.setenv("STEADFAST_WAREHOUSE_FAULTS__TIMEOUT_RATE", "0.5")
    monkeypatch.setenv("STEADFAST_WAREHOUSE_FAULTS__OUTAGE", "true")
    faults = WarehouseMockSettings().warehouse_faults
    assert (faults.timeout_rate, faults.outage) == (0.5, True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STEADFAST_WAREHOUSE_STOCK", '{"SKU-1": -1}'),
        ("STEADFAST_WAREHOUSE_PORT", "70000"),
        ("STEADFAST_WAREHOUSE_FAULTS", '{"failure_rate": 3}'),
        ("STEADFAST_LOG_LEVEL", "chatty"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        WarehouseMockSettings()


def test_a_token_is_required_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="STEADFAST_ADMIN_TOKEN is required"):
        WarehouseMockSettings()


def test_dev_mode_makes_up_a_token() -> None:
    settings = WarehouseMockSettings(dev_mode=True)
    assert settings.admin_token is not None
    assert len(settings.admin_token.get_secret_value()) >= 20


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    # Neither start a server nor rewire the root logger under pytest.
    recorders = {"run": Recorder(), "logging": Recorder()}
    monkeypatch.setattr(cli.uvicorn, "run", recorders["run"])
    monkeypatch.setattr(cli, "configure_logging", recorders["logging"])
    return recorders


@pytest.mark.parametrize(
    ("args", "host", "port"),
    [
        ([], "127.0.0.1", 8081),
        (["--port", "0"], "127.0.0.1", 0),
        (["--host", "::1", "--port", "18081"], "::1", 18081),
    ],
)
def test_cli_runs_uvicorn_with_the_settings(
    monkeypatch: pytest.MonkeyPatch,
    stubbed: dict[str, Recorder],
    args: list[str],
    host: str,
    port: int,
) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert stubbed["logging"].calls == [(("warehouse-mock", "INFO"), {})]
    [(run_args, run_kwargs)] = stubbed["run"].calls
    assert isinstance(run_args[0], FastAPI)
    assert (run_kwargs["host"], run_kwargs["port"]) == (host, port)
    assert run_kwargs["timeout_graceful_shutdown"] == 5
    assert run_kwargs["log_config"] is None


def test_cli_port_flag_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, stubbed: dict[str, Recorder]
) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    monkeypatch.setenv("STEADFAST_WAREHOUSE_PORT", "9000")
    assert CliRunner().invoke(cli.main, ["--port", "9001"]).exit_code == 0
    assert stubbed["run"].calls[0][1]["port"] == 9001


@pytest.mark.parametrize("args", [["--port", "-1"], ["--port", "65536"], ["--port", "http"]])
def test_cli_refuses_bad_ports(
    monkeypatch: pytest.MonkeyPatch, stubbed: dict[str, Recorder], args: list[str]
) -> None:
    monkeypatch.setenv("STEADFAST_ADMIN_TOKEN", "secret")
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    assert stubbed["run"].calls == []


def test_cli_without_a_token_exits_with_the_reason(stubbed: dict[str, Recorder]) -> None:
    result = CliRunner().invoke(cli.main, [])
    assert result.exit_code == 1
    assert "STEADFAST_ADMIN_TOKEN is required" in result.output
    assert stubbed["run"].calls == []
