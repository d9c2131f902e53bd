"""Percentiles, the run summary (counts add up, lost, unexpected) and its JSON and table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from local.load.report import Summary, per_second, percentiles, table
from local.load.run import LoadConfig, summarize
from local.load.runner import Budget, Placement, PlacementRun
from local.load.settle import Final, Settled
from local.load.target import Target
from local.load.workload import Kind, Mix

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_percentiles_of_1_to_100() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01})


def test_percentiles_stay_inside_the_sample() -> None:
    got = percentiles([0.1, 0.2, 5.0])
    assert 0.1 <= got["p50"] <= got["p95"] <= got["p99"] <= 5.0


@pytest.mark.parametrize(("values", "expected"), [([], {}), ([0.3], {"p50": 0.3, "p95": 0.3})])
def test_percentiles_of_tiny_samples(values: list[float], expected: dict[str, float]) -> None:
    assert percentiles(values, points=(50, 95)) == expected


def test_per_second() -> None:
    assert per_second(300, 2.0) == 150.0
    assert per_second(5, 0.0) == 0.0


def _config(mix: str = "healthy=80,out_of_stock=10,poison=10") -> LoadConfig:
    target = Target(
        api="http://127.0.0.1:1", warehouse=None, admin_token=None, kafka_bootstrap=None, topic="t"
    )
    return LoadConfig(
        target=target, mix=Mix.parse(mix), budget=Budget(10, 10.0), rate=5.0, run_id="r"
    )


def _placement(i: int, kind: Kind, ok: bool = True) -> Placement:
    if not ok:
        return Placement(i, kind, status_code=500, error="HTTP 500", seconds=0.02)
    return Placement(i, kind, f"o{i}", T0 + timedelta(seconds=i), 202, seconds=0.01 * (i + 1))


def test_summary_counts_add_up() -> None:
    run = PlacementRun(started_at=T0, elapsed=2.0, poison_sent=1)
    run.placements = [
        _placement(0, Kind.HEALTHY),
        _placement(1, Kind.HEALTHY),
        _placement(2, Kind.OUT_OF_STOCK),
        _placement(3, Kind.HEALTHY),
        _placement(4, Kind.HEALTHY),
        _placement(5, Kind.HEALTHY, ok=False),
    ]

    def final(i: int, status: str, ms: int) -> Final:
        created = T0 + timedelta(seconds=i)
        return Final(status, created, created + timedelta(milliseconds=ms))

    settled = Settled(
        finals={
            "o0": final(0, "RESERVED", 100),
            "o1": final(1, "RESERVED", 200),
            "o2": final(2, "REJECTED", 300),
            "o3": final(3, "DEAD", 400),
        },
        still_pending={},
        missing={"o4"},
        poison_rows={"load-poison-r-9": ("DEAD", "poison")},
    )
    before = {"duplicate_reservations": 3, "reservations": 10}
    after = {"duplicate_reservations": 3, "reservations": 12}
    s = summarize(_config(), None, run, settled, before, after)

    assert (s.attempted, s.placed, s.placement_errors) == (6, 5, {"HTTP 500": 1})
    assert (s.reserved, s.rejected, s.dead, s.cancelled) == (2, 1, 1, 0)
    assert (s.still_pending, s.missing, s.lost) == (0, 1, 1)
    assert s.reserved + s.rejected + s.dead + s.cancelled + s.lost == s.placed
    assert (s.duplicates, s.warehouse_reservations) == (0, 2)
    assert (s.poison_injected, s.poison_dead_lettered) == (1, 1)
    assert s.unexpected == {"healthy": {"DEAD": 1, "NOT_FINAL": 1}}
    assert s.by_kind["healthy"]["placement_error"] == 1
    assert s.placed_per_second == 2.5
    assert s.final_window_seconds == pytest.approx(3.4)
    assert s.latency_ms["p50"] == pytest.approx(250.0)
    assert s.reserved_latency_ms["p99"] == pytest.approx(199.0)
    assert not s.ok
    assert s.problems == ["1 order(s) lost (not final in time)"]


def test_summary_without_warehouse_stats_knows_no_duplicates() -> None:
    run = PlacementRun(started_at=T0, elapsed=1.0)
    s = summarize(_config("healthy=1"), None, run, Settled(), None, None)
    assert s.duplicates is None
    assert s.ok


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"duplicates": 2}, "2 duplicate reservation(s)"),
        ({"poison_injected": 3, "poison_dead_lettered": 2}, "1 poison event(s)"),
        ({"lost": 1}, "1 order(s) lost"),
    ],
)
def test_summary_fails_on(changes: dict[str, int], problem: str) -> None:
    s = Summary(
        run_id="r", mode="rate", mix="healthy=1", target_rate=1.0, concurrency=None, faults=None
    )
    assert s.ok
    for name, value in changes.items():
        setattr(s, name, value)
    assert not s.ok
    assert any(p.startswith(problem) for p in s.problems)


def test_json_and_table(tmp_path: Path) -> None:
    s = Summary(
        run_id="r", mode="concurrency", mix="healthy=1", target_rate=None, concurrency=4,
        faults=None, placed=3, reserved=3, duplicates=0,
        latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0},
    )  # fmt: skip
    path = tmp_path / "out" / "r.json"
    s.write(path)
    data = json.loads(path.read_text())
    assert data["ok"] is True and data["problems"] == []
    for key in ("placed", "reserved", "rejected", "dead", "still_pending", "lost", "duplicates",
                "placed_per_second", "final_per_second", "latency_ms"):  # fmt: skip
        assert key in data
    console = Console(width=120, record=True)
    console.print(table(s))
    text = console.export_text()
    assert "4 clients" in text and "1 / 2 / 3" in text
