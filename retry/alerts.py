"""In-process threshold alerts, for operators who don't run Prometheus.

Each `AlertRule` compares one probe's value (an async callable returning a float) with a
threshold. `ThresholdAlerts.evaluate()`, called on an interval (the scheduler has a hook
for it), fires once per episode: when a rule has been breached for `for_seconds` it logs
`event.action=alert` with `alert.status=firing` (and notifies), and when the value comes
back it logs and notifies `alert.status=resolved`. A rule that stays breached says nothing
more; a new breach after a resolve is a new episode and fires again.

The notifier is a Protocol (`async notify(event)`), so the application can pass a webhook
sender built on its own HTTP client; this package has none.

Probes give current values. Many useful signals are rates of change of a cumulative count
(DEAD rows, failed calls), so `Increase` and `RatioOfIncreases` turn cumulative probes
into windowed ones, like Prometheus' `increase()`. `default_rules` and `default_probes`
mirror the Prometheus rules in local/alerts.yml.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from retry.clock import Clock

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[float]]

_COMPARISONS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True, kw_only=True)
class AlertRule:
    name: str
    threshold: float
    comparison: str = ">"
    for_seconds: float = 0.0
    """How long the breach must last before the alert fires (0: at the first evaluation)."""
    description: str = ""
    probe: str | None = None
    """Name of the probe to read; defaults to the rule's name."""
    severity: str = "warning"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an alert rule needs a name")
        if self.comparison not in _COMPARISONS:
            raise ValueError(f"comparison must be one of {sorted(_COMPARISONS)}")
        if not (self.for_seconds >= 0 and math.isfinite(self.for_seconds)):
            raise ValueError("for_seconds must be >= 0")
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")

    @property
    def probe_name(self) -> str:
        return self.probe or self.name

    def breached(self, value: float) -> bool:
        return _COMPARISONS[self.comparison](value, self.threshold)


class Notifier(Protocol):
    async def notify(self, event: dict[str, Any]) -> None: ...


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.fired = Counter(
            "steadfast_alerts_fired",
            "Alert episodes that started firing",
            ["alert"],
            registry=registry,
        )
        self.active = Gauge(
            "steadfast_alert_active",
            "1 while the in-process alert is firing",
            ["alert"],
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


@dataclass
class _Episode:
    breached_since: float | None = None
    firing: bool = False


class ThresholdAlerts:
    def __init__(
        self,
        rules: Sequence[AlertRule],
        probes: Mapping[str, Probe],
        *,
        clock: Clock,
        notifier: Notifier | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError("alert rule names must be unique")
        missing = sorted({rule.probe_name for rule in rules} - set(probes))
        if missing:
            raise ValueError(f"no probe for {missing}")
        self.rules = tuple(rules)
        self._probes = dict(probes)
        self._clock = clock
        self._notifier = notifier
        self._episodes = {rule.name: _Episode() for rule in rules}
        self._metrics: _Metrics | None = None
        if registry is not None:
            if registry not in _METRICS:
                _METRICS[registry] = _Metrics(registry)
            self._metrics = _METRICS[registry]
            for rule in rules:
                self._metrics.fired.labels(alert=rule.name)
                self._metrics.active.labels(alert=rule.name).set(0)

    @property
    def firing(self) -> list[str]:
        return [name for name, episode in self._episodes.items() if episode.firing]

    async def evaluate(self) -> list[dict[str, Any]]:
        """Check every rule once; returns the events (firing/resolved) this pass emitted."""
        events: list[dict[str, Any]] = []
        # Each probe once per pass, even when several rules read it.
        values: dict[str, float | None] = {}
        for rule in self.rules:
            if rule.probe_name not in values:
                values[rule.probe_name] = await self._read(rule.probe_name)
            value = values[rule.probe_name]
            if value is None:
                continue  # no data: neither fire nor resolve on a guess
            event = self._step(rule, value)
            if event is not None:
                events.append(event)
        for event in events:
            await self._notify(event)
        return events

    async def run(self, interval_seconds: float) -> None:
        """Evaluate forever, every `interval_seconds` of the injected clock (cancel to stop)."""
        while True:
            await self.evaluate()
            await self._clock.sleep(interval_seconds)

    async def _read(self, name: str) -> float | None:
        try:
            value = float(await self._probes[name]())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(
                "alert probe %s failed",
                name,
                exc_info=True,
                extra={"event.action": "alert_probe_failed", "alert.probe": name},
            )
            return None
        return None if math.isnan(value) else value

    def _step(self, rule: AlertRule, value: float) -> dict[str, Any] | None:
        episode = self._episodes[rule.name]
        now = self._clock.monotonic()
        if not rule.breached(value):
            episode.breached_since = None
            if not episode.firing:
                return None
            episode.firing = False
            if self._metrics is not None:
                self._metrics.active.labels(alert=rule.name).set(0)
            return self._emit(rule, value, "resolved")
        if episode.breached_since is None:
            episode.breached_since = now
        if episode.firing or now - episode.breached_since < rule.for_seconds:
            return None
        episode.firing = True
        if self._metrics is not None:
            self._metrics.fired.labels(alert=rule.name).inc()
            self._metrics.active.labels(alert=rule.name).set(1)
        return self._emit(rule, value, "firing")

    def _emit(self, rule: AlertRule, value: float, status: str) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event.action": "alert",
            "alert.name": rule.name,
            "alert.status": status,
            "alert.value": value,
            "alert.threshold": rule.threshold,
            "alert.comparison": rule.comparison,
            "alert.severity": rule.severity,
            "alert.description": rule.description,
            "alert.at": self._clock.now().isoformat(),
        }
        level = logging.WARNING if status == "firing" else logging.INFO
        if status == "firing" and rule.severity == "critical":
            level = logging.ERROR
        log.log(
            level,
            "alert %s %s: %s %s %s",
            rule.name,
            status,
            value,
            rule.comparison,
            rule.threshold,
            extra=event,
        )
        return event

    async def _notify(self, event: dict[str, Any]) -> None:
        if self._notifier is None:
            return
        try:
            await self._notifier.notify(dict(event))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The log line already went out; a dead webhook must not stop the evaluation.
            log.warning(
                "alert notification failed",
                exc_info=True,
                extra={"event.action": "alert_notify_failed", "alert.name": event["alert.name"]},
            )


# -- windowed probes -----------------------------------------------------------------------


class Increase:
    """The increase of a cumulative probe over the last `window_seconds` (monotonic time).

    Until a full window has been observed it answers the increase since the first sample.
    Only rises are added up, sample to sample: a drop (a restarted counter, DEAD rows an
    operator reprocessed) neither counts as negative growth nor hides the growth after it.
    """

    def __init__(self, source: Probe, window_seconds: float, clock: Clock) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self._source = source
        self._window = window_seconds
        self._clock = clock
        self._last: float | None = None
        self._risen = 0.0  # sum of rises since the first sample
        self._samples: deque[tuple[float, float]] = deque()  # (monotonic, risen)

    async def __call__(self) -> float:
        value = float(await self._source())
        now = self._clock.monotonic()
        if self._last is not None:
            self._risen += max(0.0, value - self._last)
        self._last = value
        self._samples.append((now, self._risen))
        # Keep exactly one sample at or before the window's start: it is the baseline.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        return self._risen - self._samples[0][1]


class RatioOfIncreases:
    """increase(numerator) / increase(denominator) over a window; NaN below `min_denominator`
    (a handful of calls must not page anyone, and NaN makes the alert hold its state)."""

    def __init__(
        self,
        numerator: Probe,
        denominator: Probe,
        window_seconds: float,
        clock: Clock,
        *,
        min_denominator: float = 1.0,
    ) -> None:
        self._numerator = Increase(numerator, window_seconds, clock)
        self._denominator = Increase(denominator, window_seconds, clock)
        self._min = min_denominator

    async def __call__(self) -> float:
        part = await self._numerator()
        whole = await self._denominator()
        if whole < self._min or whole <= 0:
            return math.nan
        return part / whole


FAILURE_RATIO = "failure_ratio"
DEAD_GROWTH = "dead_growth"
RETRY_BACKLOG = "retry_backlog"
BREAKER_OPEN_SECONDS = "breaker_open_seconds"


def default_rules(
    *,
    failure_ratio: float = 0.2,
    failure_for_seconds: float = 120.0,
    dead_growth: float = 0.0,
    backlog: float = 500.0,
    backlog_for_seconds: float = 300.0,
    breaker_open_seconds: float = 120.0,
) -> list[AlertRule]:
    """The four in-process alerts; thresholds match local/alerts.yml by default."""
    return [
        AlertRule(
            name="failure_ratio_high",
            probe=FAILURE_RATIO,
            threshold=failure_ratio,
            comparison=">",
            for_seconds=failure_for_seconds,
            description="Share of dependency calls failing (retryable failures) over the window",
        ),
        AlertRule(
            name="dead_letters_growing",
            probe=DEAD_GROWTH,
            threshold=dead_growth,
            comparison=">",
            description="Messages reached DEAD in the window: operators must look at them",
        ),
        AlertRule(
            name="retry_backlog_high",
            probe=RETRY_BACKLOG,
            threshold=backlog,
            comparison=">",
            for_seconds=backlog_for_seconds,
            description="Messages waiting in the retry table (PENDING and IN_PROGRESS)",
        ),
        AlertRule(
            name="breaker_open_too_long",
            probe=BREAKER_OPEN_SECONDS,
            threshold=breaker_open_seconds,
            comparison=">=",
            severity="critical",
            description="Seconds the circuit breaker has been open or half-open",
        ),
    ]


def default_probes(
    *,
    clock: Clock,
    failed_calls: Probe,
    total_calls: Probe,
    dead_rows: Probe,
    backlog_rows: Probe,
    breaker_open_seconds: Probe,
    failure_window_seconds: float = 300.0,
    min_calls: float = 30.0,
    dead_window_seconds: float = 600.0,
) -> dict[str, Probe]:
    """Probes for `default_rules` from cumulative counts (calls, DEAD rows) and gauges
    (backlog, `CircuitBreaker.seconds_unhealthy`)."""
    return {
        FAILURE_RATIO: RatioOfIncreases(
            failed_calls, total_calls, failure_window_seconds, clock, min_denominator=min_calls
        ),
        DEAD_GROWTH: Increase(dead_rows, dead_window_seconds, clock),
        RETRY_BACKLOG: backlog_rows,
        BREAKER_OPEN_SECONDS: breaker_open_seconds,
    }
