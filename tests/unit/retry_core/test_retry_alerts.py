"""Threshold alerts: once per episode, resolved on recovery, notified, and counted."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from retry.alerts import (
    AlertRule,
    Increase,
    RatioOfIncreases,
    ThresholdAlerts,
    default_probes,
    default_rules,
)
from retry.clock import FakeClock


class Values:
    """A probe whose value the test sets; it can also fail on demand."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value
        self.fail = False

    async def __call__(self) -> float:
        if self.fail:
            raise ConnectionError("database away")
        return self.value


class Inbox:
    def __init__(self, *, broken: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.broken = broken

    async def notify(self, event: dict[str, Any]) -> None:
        if self.broken:
            raise ConnectionError("webhook down")
        self.events.append(event)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def statuses(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["alert.name"], e["alert.status"]) for e in events]


async def test_fires_once_per_episode_resolves_and_fires_again(clock: FakeClock) -> None:
    backlog = Values()
    inbox = Inbox()
    registry = CollectorRegistry()
    alerts = ThresholdAlerts(
        [AlertRule(name="backlog", threshold=100, description="rows waiting")],
        {"backlog": backlog},
        clock=clock,
        notifier=inbox,
        registry=registry,
    )

    def sample(metric: str) -> float | None:
        return registry.get_sample_value(metric, {"alert": "backlog"})

    script = [(50, []), (150, ["firing"]), (200, []), (180, []), (100, ["resolved"]), (90, [])]
    script += [(101, ["firing"]), (0, ["resolved"])]
    for value, expected in script:
        backlog.value = value
        events = await alerts.evaluate()
        assert [e["alert.status"] for e in events] == expected, value
    assert statuses(inbox.events) == [("backlog", "firing"), ("backlog", "resolved")] * 2
    assert sample("steadfast_alerts_fired_total") == 2
    assert sample("steadfast_alert_active") == 0
    first = inbox.events[0]
    assert first["alert.value"] == 150
    assert first["alert.threshold"] == 100
    assert first["alert.description"] == "rows waiting"
    assert first["event.action"] == "alert"


async def test_the_log_line_carries_the_alert_fields(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retry.alerts")
    alerts = ThresholdAlerts(
        [AlertRule(name="dead", threshold=0, severity="critical")],
        {"dead": Values(3)},
        clock=clock,
    )
    await alerts.evaluate()
    [record] = [r for r in caplog.records if getattr(r, "event.action", None) == "alert"]
    assert record.levelno == logging.ERROR  # critical
    assert getattr(record, "alert.name") == "dead"
    assert getattr(record, "alert.status") == "firing"
    assert getattr(record, "alert.value") == 3
    assert getattr(record, "alert.threshold") == 0
    assert alerts.firing == ["dead"]


async def test_for_seconds_waits_for_a_sustained_breach(clock: FakeClock) -> None:
    ratio = Values(0.9)
    alerts = ThresholdAlerts(
        [AlertRule(name="ratio", threshold=0.5, for_seconds=60)], {"ratio": ratio}, clock=clock
    )
    assert await alerts.evaluate() == []
    clock.advance(59)
    assert await alerts.evaluate() == []
    ratio.value = 0.1  # a dip resets the clock on the breach
    await alerts.evaluate()
    ratio.value = 0.9
    clock.advance(30)
    assert await alerts.evaluate() == []
    clock.advance(60)
    assert statuses(await alerts.evaluate()) == [("ratio", "firing")]


@pytest.mark.parametrize(
    ("comparison", "value", "breached"),
    [
        (">", 10, False),
        (">", 10.1, True),
        (">=", 10, True),
        ("<", 10, False),
        ("<", 9, True),
        ("<=", 10, True),
    ],
)
async def test_comparisons(clock: FakeClock, comparison: str, value: float, breached: bool) -> None:
    alerts = ThresholdAlerts(
        [AlertRule(name="x", threshold=10, comparison=comparison)],
        {"x": Values(value)},
        clock=clock,
    )
    assert bool(await alerts.evaluate()) is breached


async def test_a_failing_probe_or_no_data_neither_fires_nor_resolves(clock: FakeClock) -> None:
    probe = Values(5)
    alerts = ThresholdAlerts([AlertRule(name="x", threshold=1)], {"x": probe}, clock=clock)
    assert statuses(await alerts.evaluate()) == [("x", "firing")]
    probe.fail = True
    assert await alerts.evaluate() == []
    probe.fail = False
    probe.value = math.nan
    assert await alerts.evaluate() == []
    assert alerts.firing == ["x"]
    probe.value = 0
    assert statuses(await alerts.evaluate()) == [("x", "resolved")]


async def test_a_broken_notifier_does_not_stop_the_evaluation(clock: FakeClock) -> None:
    alerts = ThresholdAlerts(
        [AlertRule(name="a", threshold=1), AlertRule(name="b", threshold=1)],
        {"a": Values(5), "b": Values(5)},
        clock=clock,
        notifier=Inbox(broken=True),
    )
    assert statuses(await alerts.evaluate()) == [("a", "firing"), ("b", "firing")]


async def test_rules_may_share_a_probe_which_is_read_once_per_pass(clock: FakeClock) -> None:
    reads = 0

    async def probe() -> float:
        nonlocal reads
        reads += 1
        return 50

    alerts = ThresholdAlerts(
        [
            AlertRule(name="warn", probe="backlog", threshold=10),
            AlertRule(name="page", probe="backlog", threshold=100),
        ],
        {"backlog": probe},
        clock=clock,
    )
    assert statuses(await alerts.evaluate()) == [("warn", "firing")]
    assert reads == 1


@pytest.mark.parametrize(
    ("rules", "probes", "message"),
    [
        ([AlertRule(name="a", threshold=1)], {}, "no probe"),
        ([AlertRule(name="a", threshold=1)] * 2, {"a": Values()}, "unique"),
    ],
)
def test_bad_setups_are_refused(
    clock: FakeClock, rules: list[AlertRule], probes: dict[str, Values], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdAlerts(rules, probes, clock=clock)


@pytest.mark.parametrize(
    "params",
    [{"comparison": "=="}, {"for_seconds": -1}, {"threshold": math.inf}, {"name": ""}],
)
def test_bad_rules_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AlertRule(**{"name": "x", "threshold": 1, **params})


async def test_increase_over_a_window(clock: FakeClock) -> None:
    dead = Values(10)
    growth = Increase(dead, window_seconds=60, clock=clock)
    steps = [(0, 10, 0), (30, 13, 3), (30, 15, 5), (30, 15, 2), (30, 15, 0)]
    steps += [(10, 4, 0), (10, 6, 2)]  # a drop (rows reprocessed) hides no later growth
    for advance, value, expected in steps:
        clock.advance(advance)
        dead.value = value
        assert await growth() == expected


async def test_ratio_of_increases_needs_enough_traffic(clock: FakeClock) -> None:
    failed, total = Values(0), Values(0)
    ratio = RatioOfIncreases(failed, total, window_seconds=60, clock=clock, min_denominator=10)
    assert math.isnan(await ratio())
    clock.advance(10)
    failed.value, total.value = 3, 5
    assert math.isnan(await ratio())  # 5 calls: too few to judge
    clock.advance(10)
    failed.value, total.value = 8, 20
    assert await ratio() == pytest.approx(0.4)


async def test_default_rules_and_probes_fit_together(clock: FakeClock) -> None:
    failed, total, dead, backlog, open_for = Values(), Values(), Values(), Values(), Values()
    inbox = Inbox()
    alerts = ThresholdAlerts(
        default_rules(failure_for_seconds=0, backlog_for_seconds=0),
        default_probes(
            clock=clock,
            failed_calls=failed,
            total_calls=total,
            dead_rows=dead,
            backlog_rows=backlog,
            breaker_open_seconds=open_for,
            min_calls=10,
        ),
        clock=clock,
        notifier=inbox,
    )
    assert await alerts.evaluate() == []
    clock.advance(30)
    failed.value, total.value = 50, 100
    dead.value = 2
    backlog.value = 501
    open_for.value = 120
    events = await alerts.evaluate()
    assert sorted(statuses(events)) == [
        ("breaker_open_too_long", "firing"),
        ("dead_letters_growing", "firing"),
        ("failure_ratio_high", "firing"),
        ("retry_backlog_high", "firing"),
    ]
