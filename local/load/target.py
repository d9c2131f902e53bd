"""Where the load goes: endpoints from `make run`'s endpoints.json, flags on top.

Load generators are easy to point at the wrong host. Every address is checked to be
loopback unless the caller says otherwise explicitly.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from local.load import ConfigError

DEFAULT_ENDPOINTS = Path(".steadfast/run/endpoints.json")


@dataclass(frozen=True, kw_only=True)
class Target:
    api: str
    warehouse: str | None
    admin_token: str | None
    kafka_bootstrap: str | None
    topic: str
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    """librdkafka security settings (SASL, TLS) for the poison producer."""

    def check_loopback(self) -> None:
        ensure_loopback_url(self.api)
        if self.warehouse:
            ensure_loopback_url(self.warehouse)
        for hostport in (self.kafka_bootstrap or "").split(","):
            if hostport.strip():
                ensure_loopback_host(hostport.strip().rsplit(":", 1)[0], what=hostport)


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_loopback_host(host: str, *, what: str) -> None:
    if not is_loopback_host(host):
        raise ConfigError(
            f"{what} is not a loopback address; pass --allow-non-loopback to load it anyway"
        )


def ensure_loopback_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http(s) URL")
    ensure_loopback_host(parts.hostname, what=url)


def read_endpoints(path: Path) -> dict[str, Any]:
    """endpoints.json as written by the launcher, or {} when no stack runs there."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


def resolve(
    endpoints: dict[str, Any],
    *,
    api: str | None,
    warehouse: str | None,
    admin_token: str | None,
    kafka_bootstrap: str | None,
    topic: str,
) -> Target:
    """Flags win over endpoints.json; the API is the one address that must be known."""
    api = api or endpoints.get("reservation_api")
    if not api:
        raise ConfigError("no reservation API: start the stack (`make run`) or pass --api")
    return Target(
        api=api.rstrip("/"),
        warehouse=(warehouse or endpoints.get("warehouse_mock") or "").rstrip("/") or None,
        admin_token=admin_token or endpoints.get("admin_token"),
        kafka_bootstrap=kafka_bootstrap or endpoints.get("kafka_bootstrap_servers"),
        topic=topic,
        # A flag-given broker is reached with the STEADFAST_KAFKA_SECURITY__* variables.
        kafka_config=_kafka_config()
        if kafka_bootstrap
        else endpoints.get("kafka_client_config") or {},
    )


def _kafka_config() -> dict[str, str]:
    from services.common.kafka import KafkaClientEnv

    return KafkaClientEnv().kafka_security.librdkafka()
