"""Counters of what the mock saw and did: resettable stats for tests, Prometheus for dashboards.

``Stats`` is what ``GET /admin/stats`` reports and ``POST /admin/reset`` zeroes. The Prometheus
counters are never reset, because a counter that goes down mid-process confuses ``rate()``.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from services.warehouse_mock.faults import FaultKind


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PromCounter(
            "steadfast_warehouse_mock_requests_total",
            "HTTP requests answered by the warehouse mock",
            ["route", "status"],
            registry=registry,
        )
        self.faults = PromCounter(
            "steadfast_warehouse_mock_faults_total",
            "Faults injected by the warehouse mock",
            ["kind"],
            registry=registry,
        )
        # Present every kind from the start, so a dashboard shows 0 rather than no data.
        for kind in FaultKind:
            self.faults.labels(kind=kind.value)


class Stats:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()
        self.reservations = 0
        self.releases = 0
        self.duplicates_deflected = 0
        self.duplicate_reservations = 0
        self.idempotency_conflicts = 0
        self.out_of_stock = 0
        self.lines = 0
        self.faults: Counter[FaultKind] = Counter({kind: 0 for kind in FaultKind})

    def call(self, route: str, status: int) -> None:
        self.calls[(route, status)] += 1
        self._metrics.requests.labels(route=route, status=str(status)).inc()

    def fault(self, kind: FaultKind) -> None:
        self.faults[kind] += 1
        self._metrics.faults.labels(kind=kind.value).inc()

    def calls_by_route(self) -> dict[str, dict[str, int]]:
        by_route: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(self.calls.items()):
            by_route.setdefault(route, {})[str(status)] = count
        return by_route
