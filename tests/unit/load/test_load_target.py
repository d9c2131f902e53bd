"""Endpoints from endpoints.json with flags on top, and the loopback guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.load import ConfigError
from local.load.target import ensure_loopback_url, is_loopback_host, read_endpoints, resolve


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "https://api.example.com", "ftp://x"])
def test_non_loopback_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        ensure_loopback_url(url)


def test_flags_win_over_endpoints_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(
        json.dumps(
            {
                "reservation_api": "http://127.0.0.1:1/",
                "warehouse_mock": "http://127.0.0.1:2",
                "admin_token": "from-file",
                "kafka_bootstrap_servers": "127.0.0.1:3",
            }
        )
    )
    data = read_endpoints(path)
    target = resolve(
        data, api=None, warehouse=None, admin_token="flag", kafka_bootstrap=None, topic="t"
    )
    assert target.api == "http://127.0.0.1:1"
    assert target.warehouse == "http://127.0.0.1:2"
    assert target.admin_token == "flag"
    assert target.kafka_bootstrap == "127.0.0.1:3"
    target.check_loopback()


def test_remote_broker_is_refused() -> None:
    target = resolve(
        {}, api="http://127.0.0.1:1", warehouse=None, admin_token=None,
        kafka_bootstrap="127.0.0.1:9092,kafka.example.com:9092", topic="t",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"kafka\.example\.com"):
        target.check_loopback()


def test_no_stack_no_api(tmp_path: Path) -> None:
    assert read_endpoints(tmp_path / "missing.json") == {}
    with pytest.raises(ConfigError, match="make run"):
        resolve({}, api=None, warehouse=None, admin_token=None, kafka_bootstrap=None, topic="t")


def test_unreadable_endpoints_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError):
        read_endpoints(path)
