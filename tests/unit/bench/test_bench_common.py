"""The pure parts of bench.common: tolerance maths, targets, verdicts and the JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.common import RSS_LIMIT_MB, BenchResult, Drain, Target, within_tolerance, write_result


@pytest.mark.parametrize(
    ("measured", "expected", "tolerance", "ok"),
    [
        (500.0, 500.0, 0.10, True),
        (450.0, 500.0, 0.10, True),
        (550.0, 500.0, 0.10, True),
        (449.9, 500.0, 0.10, False),
        (550.1, 500.0, 0.10, False),
        (0.0, 500.0, 0.10, False),
        (500.0, 500.0, 0.0, True),
    ],
)
def test_within_tolerance(measured: float, expected: float, tolerance: float, ok: bool) -> None:
    assert within_tolerance(measured, expected, tolerance) is ok


@pytest.mark.parametrize(("expected", "tolerance"), [(0.0, 0.1), (-1.0, 0.1), (10.0, -0.1)])
def test_within_tolerance_rejects_nonsense(expected: float, tolerance: float) -> None:
    with pytest.raises(ValueError):
        within_tolerance(1.0, expected, tolerance)


@pytest.mark.parametrize(
    ("target", "measured", "met", "text"),
    [
        (Target.at_least(15_000), 15_000.0, True, ">= 15,000"),
        (Target.at_least(15_000), 14_999.0, False, ">= 15,000"),
        (Target.within(500, 0.1), 540.0, True, "500 ±10%"),
        (Target.within(500, 0.1), 300.0, False, "500 ±10%"),
    ],
)
def test_target(target: Target, measured: float, met: bool, text: str) -> None:
    assert target.met(measured) is met
    assert target.describe() == text


def result(value: float, rss: float, checks: dict[str, bool] | None = None) -> BenchResult:
    return BenchResult(
        name="unit",
        metric="events/s",
        value=value,
        target=Target.at_least(100),
        rss_mb={"proc": rss},
        broker="noida",
        checks=checks or {},
    )


@pytest.mark.parametrize(
    ("value", "rss", "checks", "passed"),
    [
        (150.0, 80.0, {}, True),
        (50.0, 80.0, {}, False),
        (150.0, RSS_LIMIT_MB, {}, False),
        (150.0, 80.0, {"drained_in_time": False}, False),
        (150.0, 80.0, {"drained_in_time": True}, True),
    ],
)
def test_passed_needs_target_rss_and_checks(
    value: float, rss: float, checks: dict[str, bool], passed: bool
) -> None:
    assert result(value, rss, checks).passed is passed


def test_drain_rate_counts_from_the_first_item() -> None:
    assert Drain(done_at_start=1_000, done=101_000, seconds=5.0, timed_out=False).rate == 20_000
    assert Drain(done_at_start=0, done=0, seconds=0.0, timed_out=True).rate == 0.0


def test_write_result_is_atomic_json_with_machine_info(tmp_path: Path) -> None:
    path = write_result(result(150.0, 80.0), results_dir=tmp_path)
    assert path == tmp_path / "bench-unit.json"
    assert not list(tmp_path.glob("*.tmp"))
    data = json.loads(path.read_text())
    assert data["passed"] is True
    assert data["rss_mb"] == {"proc": 80.0}
    assert {"cpu_count", "python", "broker", "load_average_1m"} <= set(data["machine"])
    assert data["measured_at"].endswith("+00:00")
