"""In-process threshold alerts for the scheduler process, and their webhook (httpx).

Operators without Prometheus still see alerts: each fires once per episode as an
`event.action=alert` log line (and a POST to the webhook when one is configured), and
reports its resolution the same way. Probes read shared state (the breaker row and the
retry table), so every scheduler instance sees the same numbers.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from retry.alerts import (
    BREAKER_OPEN_SECONDS,
    DEAD_GROWTH,
    FAILURE_RATIO,
    RETRY_BACKLOG,
    Increase,
    Probe,
    ThresholdAlerts,
    default_rules,
)
from retry.breaker import CircuitBreaker
from retry.clock import Clock
from retry.store import RetryStore

log = logging.getLogger(__name__)


class WebhookNotifier:
    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout_seconds

    async def notify(self, event: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.post(self._url, json=event)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            # An unreachable webhook must not stop the alert from being logged or resolved.
            log.warning(
                "alert webhook failed",
                extra={
                    "event.action": "alert_webhook_failed",
                    "error.type": type(exc).__name__,
                    "error.message": str(exc),
                },
            )


def build_alerts(
    *,
    store: RetryStore,
    breaker: CircuitBreaker,
    clock: Clock,
    registry: CollectorRegistry,
    webhook_url: str | None,
    min_calls: int,
) -> ThresholdAlerts:
    async def failure_ratio() -> float:
        window = (await breaker.snapshot())["window"]
        calls = float(window["calls"])
        return float(window["failures"]) / calls if calls >= min_calls else 0.0

    async def dead_rows() -> float:
        return float((await store.counts_by_state()).get("DEAD", 0))

    async def backlog() -> float:
        counts = await store.counts_by_state()
        return float(counts.get("PENDING", 0) + counts.get("IN_PROGRESS", 0))

    async def open_seconds() -> float:
        return float(await breaker.seconds_unhealthy())

    probes: dict[str, Probe] = {
        FAILURE_RATIO: failure_ratio,
        DEAD_GROWTH: Increase(dead_rows, 600.0, clock),
        RETRY_BACKLOG: backlog,
        BREAKER_OPEN_SECONDS: open_seconds,
    }
    return ThresholdAlerts(
        default_rules(),
        probes,
        clock=clock,
        notifier=WebhookNotifier(webhook_url) if webhook_url else None,
        registry=registry,
    )
