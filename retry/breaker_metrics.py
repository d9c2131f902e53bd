"""The circuit breaker's Prometheus metrics, registered once per registry.

`steadfast_breaker_state` is the state as this process last saw it on the shared row;
`steadfast_breaker_transitions_total` counts the transitions this process decided, so each
one is counted once across the cluster however many instances observe it.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

from retry.breaker_machine import BreakerState

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# The machine's edges (an operator's override may add others; those series appear when used).
_EDGES = (
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
)


class BreakerMetrics:
    """The breaker's gauge and counter on one registry, labelled by breaker name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "steadfast_breaker_state",
            "Circuit breaker state as this process last saw it: 0 closed, 1 half-open, 2 open.",
            ["name"],
            registry=registry,
        )
        self.transitions = Counter(
            "steadfast_breaker_transitions",
            "Breaker transitions decided by this process (each is counted once, cluster-wide).",
            ["name", "from_state", "to_state"],
            registry=registry,
        )

    def begin(self, name: str) -> None:
        """A new breaker: CLOSED until its first sync says otherwise."""
        self.state.labels(name=name).set(0)
        # Every edge starts as a 0 series, so increase() sees the first opening too
        # (a series born at 1 has no earlier sample to increase from).
        for edge in _EDGES:
            self.transitions.labels(name=name, from_state=edge[0], to_state=edge[1])

    def saw(self, name: str, state: BreakerState) -> None:
        self.state.labels(name=name).set(STATE_VALUE[state])

    def decided(self, name: str, from_state: str, to_state: str) -> None:
        self.transitions.labels(name=name, from_state=from_state, to_state=to_state).inc()


# Several breakers (or several builds of one) may share a registry: register once each.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, BreakerMetrics] = weakref.WeakKeyDictionary()


def metrics_on(registry: CollectorRegistry | None) -> BreakerMetrics | None:
    """The breaker metrics of `registry`, registered on first use; None without a registry."""
    if registry is None:
        return None
    if registry not in _METRICS:
        _METRICS[registry] = BreakerMetrics(registry)
    return _METRICS[registry]
