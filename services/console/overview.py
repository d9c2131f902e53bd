"""What every open page polls: one snapshot of the whole system, shared and cached.

A snapshot is built at most once per refresh interval, whatever the number of pages
open (concurrent requests wait for the one build in flight), and only while someone
asks: an unwatched console costs nothing. One snapshot is one PostgreSQL round trip or
two (`readonly`), one API call (the breaker's window) and two calls to the warehouse
mock, plus one to Alertmanager when it runs; none of it grows with the order rate.

Breaker transitions are not stored anywhere the console can read, so it records the
ones it sees between snapshots (a flip and back within one interval is missed; the
Prometheus chart of the breaker state covers the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from services.console.inbox import AlertInbox
from services.console.readonly import ReadOnlyDatabase
from services.console.upstream import Alertmanager, Prometheus, Upstream, UpstreamError

log = logging.getLogger(__name__)

MAX_TRANSITIONS = 50
CHART_WINDOW_SECONDS = 15 * 60
CHART_STEP_SECONDS = 15
CHART_REFRESH_SECONDS = 10.0
# name → (PromQL, unit). Aggregated across instances, as the alert rules are.
CHARTS: dict[str, tuple[str, str]] = {
    "placed": ("sum(rate(steadfast_orders_placed_total[1m]))", "orders/s"),
    "reserved": ('sum(rate(steadfast_orders_final_total{status="RESERVED"}[1m]))', "orders/s"),
    "backlog": (
        'sum(max by (state) (steadfast_retry_rows{state=~"PENDING|IN_PROGRESS"}))',
        "rows",
    ),
    "breaker_state": ("max by (name) (steadfast_breaker_state)", "0 closed, 1 half-open, 2 open"),
}


class Cached:
    """`build()` at most once per `ttl` seconds; concurrent callers share one build."""

    def __init__(
        self,
        build: Callable[[], Awaitable[dict[str, Any]]],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._ttl = ttl
        self._clock = clock
        self._value: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()
        self.builds = 0

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or self._clock() - self._at >= self._ttl:
                self._value = await self._build()
                self._at = self._clock()
                self.builds += 1
            return self._value

    def invalidate(self) -> None:
        """After an operator's change, the next poll shows its effect at once."""
        self._value = None


class BreakerWatch:
    """Transitions between the breaker rows of consecutive snapshots."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, str | None]] = {}
        self.transitions: deque[dict[str, Any]] = deque(maxlen=MAX_TRANSITIONS)

    def observe(self, breakers: list[dict[str, Any]], at: str) -> None:
        for row in breakers:
            now = (str(row["state"]), row.get("forced"))
            before = self._last.get(row["name"])
            if before is not None and before != now:
                self.transitions.appendleft(
                    {
                        "at": at,
                        "name": row["name"],
                        "from": before[0],
                        "to": now[0],
                        "forced": now[1],
                    }
                )
            self._last[row["name"]] = now


class Overview:
    def __init__(
        self,
        *,
        db: ReadOnlyDatabase,
        api: Upstream,
        warehouse: Upstream,
        prometheus: Prometheus,
        alertmanager: Alertmanager,
        inbox: AlertInbox,
        token: SecretStr,
        refresh_seconds: float,
    ) -> None:
        self._db = db
        self._api = api
        self._warehouse = warehouse
        self._prometheus = prometheus
        self._alertmanager = alertmanager
        self._inbox = inbox
        self._token = token
        self.breakers = BreakerWatch()
        self.snapshot = Cached(self._build, refresh_seconds)
        self.charts = Cached(self._charts, CHART_REFRESH_SECONDS)

    async def _build(self) -> dict[str, Any]:
        errors: dict[str, str] = {}
        at = datetime.now(UTC).isoformat()

        async def guarded(name: str, work: Awaitable[Any]) -> Any:
            try:
                return await work
            except UpstreamError as exc:
                errors[name] = str(exc)
            except Exception as exc:  # a broken part must not blank the whole page
                log.warning(
                    "overview part %s failed: %r",
                    name,
                    exc,
                    extra={"event.action": "console_overview_failed"},
                )
                errors[name] = f"{type(exc).__name__}: {exc}"
            return None

        counts, breaker, faults, stats, active = await asyncio.gather(
            guarded("database", self._db.counts()),
            guarded("api", self._api.call("GET", "/admin/breaker", token=self._token)),
            guarded("warehouse", self._warehouse.call("GET", "/admin/faults", token=self._token)),
            guarded("warehouse", self._warehouse.call("GET", "/admin/stats", token=self._token)),
            guarded("alertmanager", self._alertmanager.alerts())
            if self._alertmanager.configured
            else _none(),
        )
        if counts is not None:
            self.breakers.observe(counts.breakers, at)
        return {
            "generated_at": at,
            "orders": counts.orders if counts else None,
            "orders_exact": counts.orders_exact if counts else None,
            "retries": counts.retries if counts else None,
            "breakers": counts.breakers if counts else [],
            "breaker_view": breaker.body if breaker is not None and breaker.ok else None,
            "transitions": list(self.breakers.transitions),
            "faults": faults.body if faults is not None and faults.ok else None,
            "warehouse_stats": _stats(stats.body) if stats is not None and stats.ok else None,
            "alerts": {
                "alertmanager": _status(self._alertmanager, active, errors),
                "active": [_active(a) for a in active or []],
                "received": self._inbox.recent(),
            },
            "prometheus": "configured" if self._prometheus.configured else "not configured",
            "errors": errors,
        }

    async def _charts(self) -> dict[str, Any]:
        if not self._prometheus.configured:
            return {"prometheus": "not configured", "series": {}}
        end = time.time()
        start = end - CHART_WINDOW_SECONDS
        series: dict[str, Any] = {}
        try:
            results = await asyncio.gather(
                *(
                    self._prometheus.query_range(
                        query, start=start, end=end, step=CHART_STEP_SECONDS
                    )
                    for query, _ in CHARTS.values()
                )
            )
        except UpstreamError as exc:
            return {"prometheus": "down", "problem": str(exc), "series": {}}
        for (name, (query, unit)), matrix in zip(CHARTS.items(), results, strict=True):
            series[name] = {
                "query": query,
                "unit": unit,
                "lines": [
                    {
                        "series_labels": item.get("metric", {}),
                        "points": [[float(t), float(v)] for t, v in item.get("values", [])],
                    }
                    for item in matrix
                ],
            }
        return {"prometheus": "up", "start": start, "end": end, "series": series}


async def _none() -> None:
    return None


def _status(am: Alertmanager, active: Any, errors: dict[str, str]) -> str:
    if not am.configured:
        return "not configured"
    return "down" if "alertmanager" in errors else "up"


def _active(alert: dict[str, Any]) -> dict[str, Any]:
    labels = alert.get("labels", {})
    return {
        "fingerprint": alert.get("fingerprint"),
        "name": labels.get("alertname"),
        "severity": labels.get("severity"),
        "alert_labels": labels,
        "summary": alert.get("annotations", {}).get("summary"),
        "state": alert.get("status", {}).get("state"),
        "inhibited_by": alert.get("status", {}).get("inhibitedBy", []),
        "starts_at": alert.get("startsAt"),
    }


def _stats(stats: dict[str, Any]) -> dict[str, Any]:
    # The mock's stock levels (up to 200 SKUs) are not for the page; keep the page small.
    trimmed = dict(stats)
    stock = dict(trimmed.get("stock", {}))
    stock.pop("levels", None)
    trimmed["stock"] = stock
    return trimmed
