"""bench.charts on real result files: the committed ones, and one written by `report`.

The series come from the real `drain` and `RssSampler` (sampling this process), so the
test sees what `make bench` writes; the PNGs are read back with Pillow.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from bench import charts
from bench.common import BenchResult, RssSampler, Target, drain, report

RESULTS = Path(__file__).resolve().parents[3] / "results"
CHAOS_SCENARIO = {
    "scenario": "api-kill",
    "broker": "kafka",
    "orders": 150,
    "lost": 0,
    "duplicates": 0,
    "drain_seconds": 4.0,
    "wall_seconds": 40.0,
    "notes": {
        "timeline": [
            [0.0, "started relay"],
            [3.5, "started api"],
            [10.0, "21 requests in flight at the kill"],
            [10.1, "kill -9 api (pid 25021)"],
            [12.0, "started api.2"],
            [14.0, "warehouse outage for 6s"],
            [20.0, "warehouse back at 30% failures"],
            [21.0, "broker stop (SIGTERM)"],
            [23.0, "broker started"],
            [39.0, "drained 4.0s after the last order was answered"],
        ]
    },
}


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_throughput_is_the_count_delta_over_each_windows_real_length() -> None:
    times = [0.0, 0.5, 1.0, 1.6, 2.0, 3.2]
    done = [0, 50, 100, 220, 260, 500]
    xs, rates = charts.throughput(times, done)
    assert xs == [1.0, 2.0, 3.2]
    assert rates == pytest.approx([100.0, 160.0, 200.0])
    assert charts.throughput([0.0], [0]) == ([], [])


def test_chaos_events_keep_kills_restarts_outage_and_drain_but_not_start_up() -> None:
    kinds = [(at, kind) for at, kind, _ in charts.chaos_events(CHAOS_SCENARIO)]
    assert kinds == [
        (10.0, "note"),
        (10.1, "kill"),
        (12.0, "restart"),
        (14.0, "outage"),
        (20.0, "back"),
        (21.0, "kill"),
        (23.0, "restart"),
        (39.0, "drained"),
    ]


def test_a_report_writes_the_series_and_a_chart_with_a_panel_for_each(
    tmp_path: Path,
) -> None:
    started = time.monotonic()

    def progress() -> int:
        return min(1500, int((time.monotonic() - started) * 1000))

    with RssSampler({"bench": os.getpid()}, interval=0.05) as rss:
        done = drain(progress, 1500, timeout=10, interval=0.01)
    result = BenchResult(
        name="tiny",
        metric="events/s",
        value=done.rate,
        target=Target.at_least(500),
        rss_mb=rss.peak_mb(),
        broker="none",
    )
    path = report(result, tmp_path)
    body = json.loads(path.read_text())
    progress_series = body["series"]["progress"]
    assert progress_series["done"][-1] == 1500
    assert len(progress_series["t"]) == len(progress_series["done"]) >= 3
    assert body["series"]["rss_mb"]["bench"][-1] > 0
    assert charts.panels_for(body["series"]) == ["throughput", "rss", "summary"]
    width, height = png_size(charts.chart_path(path))
    assert width == charts.WIDTH * charts.DPI

    # The same result without its series is drawn as the summary only: a shorter chart.
    del body["series"]
    bare = tmp_path / "bench-bare.json"
    bare.write_text(json.dumps(body))
    assert png_size(charts.write_bench_chart(bare))[1] < height


@pytest.mark.parametrize("name", ["bench-relay.json", "bench-e2e.json", "chaos.json"])
def test_the_committed_results_are_drawn(tmp_path: Path, name: str) -> None:
    source = RESULTS / name
    if not source.exists():
        pytest.fail(f"{source} is missing: the README's charts are drawn from it")
    copy = tmp_path / name
    shutil.copy(source, copy)
    assert charts.main([str(copy)]) == 0
    width, height = png_size(charts.chart_path(copy))
    assert width > 500 and height > 200


def test_e2e_summary_has_each_latency_once_and_the_peak_rss(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "bench-e2e.json").read_text())
    bars = charts.summary_bars(result, charts.latency_summaries(result["details"]), with_rss=True)
    labels = [label for label, _, _ in bars]
    assert labels[:2] == ["measured (orders/s)", "target"]
    assert "latency_run reserved_latency p99 (ms)" in labels
    assert not any(label.startswith("latency_run latency ") for label in labels)
    assert sum(label.startswith("peak RSS") for label in labels) == len(result["rss_mb"])


def test_a_chaos_file_without_scenarios_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "chaos.json"
    empty.write_text('{"scale": "full", "scenarios": []}')
    with pytest.raises(ValueError, match="no scenarios"):
        charts.write_chaos_chart(empty)
