"""PNG charts next to the bench and chaos JSON: `results/bench-<name>.png`, `results/chaos.png`.

A bench chart shows what its JSON holds: throughput over time (from `series.progress`, the
finished-item counts `bench.common.drain` samples), latency percentiles over time when a
bench records `series.latency_ms` ({"t": [...], "p50": [...], "p99": [...]}), RSS per
process over time (`series.rss_mb`, from `RssSampler`), and always the headline against
its target with the latency percentiles and peak RSS found in the result. Results written
before the series existed get the summary only.

The chaos chart is one lane per scenario on a common time axis: the kills, stops and
restarts from each scenario's `notes.timeline`, a warehouse outage as a band, and the
drain (from the last answered order to every order final) as a second band.

matplotlib's object API on the Agg canvas: no pyplot state, no display, safe in a thread.
`python -m bench.charts [FILE ...]` redraws every chart from the JSON in `results/`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
DPI = 100
PANEL_HEIGHT = 2.6
WIDTH = 10.0
RATE_WINDOW_SECONDS = 1.0

# Timeline notes by kind, matched on their wording in tests/chaos (first match wins).
EVENT_KINDS: tuple[tuple[str, re.Pattern[str], str, str], ...] = (
    ("kill", re.compile(r"^kill\b|\bstop\b", re.I), "tab:red", "X"),
    ("outage", re.compile(r"outage", re.I), "tab:orange", "v"),
    ("back", re.compile(r"\bback\b", re.I), "tab:green", "^"),
    ("restart", re.compile(r"\bstarted\b", re.I), "tab:green", "o"),
    ("replay", re.compile(r"replayed", re.I), "tab:purple", "D"),
    ("drained", re.compile(r"drained", re.I), "tab:blue", "|"),
)
NOTE_COLOUR = "0.45"


def chart_path(json_path: Path) -> Path:
    return json_path.with_suffix(".png")


# -- benches --------------------------------------------------------------------------------


def throughput(times: Sequence[float], done: Sequence[float]) -> tuple[list[float], list[float]]:
    """Items per second in consecutive windows of `RATE_WINDOW_SECONDS`, at each window's end.

    From cumulative counts sampled at uneven times: a window's rate is its count delta over
    its real length, so a late sample does not show up as a spike.
    """
    points = sorted(zip(times, done, strict=True))
    if len(points) < 2:
        return [], []
    xs: list[float] = []
    rates: list[float] = []
    start_t, start_n = points[0]
    for t, n in points[1:]:
        if t - start_t >= RATE_WINDOW_SECONDS:
            xs.append(t)
            rates.append((n - start_n) / (t - start_t))
            start_t, start_n = t, n
    return xs, rates


def latency_summaries(details: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Every `*latency_ms` percentile dict in a result's details, by a readable name."""
    found: dict[str, dict[str, float]] = {}

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if not isinstance(value, Mapping):
            return
        for key, item in value.items():
            if key.endswith("latency_ms") and isinstance(item, Mapping) and item:
                found[" ".join((*path, key.removesuffix("_ms")))] = {
                    str(k): float(v) for k, v in item.items() if isinstance(v, int | float)
                }
            else:
                walk(item, (*path, str(key)))

    walk(details, ())
    return found


def panels_for(series: Mapping[str, Any]) -> list[str]:
    """The chart's panels, top to bottom: a time series each, then the summary."""
    wanted = (("throughput", "progress"), ("latency", "latency_ms"), ("rss", "rss_mb"))
    return [panel for panel, key in wanted if key in series] + ["summary"]


def write_bench_chart(json_path: Path, out: Path | None = None) -> Path:
    result = json.loads(json_path.read_text())
    series: Mapping[str, Any] = result.get("series") or {}
    latencies = latency_summaries(result.get("details") or {})
    panels = panels_for(series)
    bars = summary_bars(result, latencies, with_rss="rss_mb" not in series)
    heights = [PANEL_HEIGHT] * (len(panels) - 1) + [max(PANEL_HEIGHT, 0.8 + 0.22 * len(bars))]
    figure = Figure(figsize=(WIDTH, sum(heights) + 0.6), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "throughput":
            _throughput_panel(ax, result, series["progress"])
        elif panel == "latency":
            _latency_series_panel(ax, series["latency_ms"])
        elif panel == "rss":
            _rss_panel(ax, series["rss_mb"], float(result.get("rss_limit_mb") or 0))
        else:
            _summary_panel(ax, result, bars)
    machine = result.get("machine") or {}
    verdict = "passed" if result.get("passed") else "missed its target"
    figure.suptitle(
        f"bench {result.get('bench')}: {result.get('value'):,} {result.get('metric')} ({verdict})"
        f"\n{result.get('measured_at', '')[:10]}, {machine.get('cpu_count', '?')} CPUs, "
        f"broker {machine.get('broker', '?')}, load {machine.get('load_average_1m', '?')}",
        fontsize=10,
    )
    target = out or chart_path(json_path)
    figure.savefig(target)
    return target


def _throughput_panel(ax: Axes, result: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
    xs, rates = throughput(progress["t"], progress["done"])
    ax.plot(
        xs, rates, color="tab:blue", label=f"{result.get('metric')}, per {RATE_WINDOW_SECONDS:g} s"
    )
    target = result.get("target") or {}
    if target.get("kind") in {"at_least", "within"}:
        ax.axhline(target["value"], color="tab:red", linestyle="--", label="target")
    ax.axhline(result.get("value", 0), color="tab:green", linestyle=":", label="headline")
    ax.set_ylabel(str(result.get("metric")))
    ax.set_xlabel("seconds from the first finished item")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _latency_series_panel(ax: Axes, latency: Mapping[str, Any]) -> None:
    for key in ("p50", "p95", "p99"):
        if key in latency:
            ax.plot(latency["t"], latency[key], label=key)
    ax.set_ylabel("latency ms")
    ax.set_xlabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _rss_panel(ax: Axes, rss: Mapping[str, Any], limit: float) -> None:
    for name, values in rss.items():
        if name != "t":  # None: the process was not running yet
            ax.plot(rss["t"], [math.nan if v is None else v for v in values], label=name)
    if limit:
        ax.axhline(limit, color="tab:red", linestyle="--", label="limit")
    ax.set_ylabel("RSS MiB")
    ax.set_xlabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    ax.grid(alpha=0.3)


def summary_bars(
    result: Mapping[str, Any], latencies: Mapping[str, Mapping[str, float]], *, with_rss: bool
) -> list[tuple[str, float, str]]:
    """(label, value, colour): the headline, its target, latency percentiles, peak RSS."""
    bars = [(f"measured ({result.get('metric')})", float(result.get("value", 0)), "tab:blue")]
    target = result.get("target") or {}
    if target.get("value") is not None:
        bars.append(("target", float(target["value"]), "tab:red"))
    shown: list[Mapping[str, float]] = []
    # The generic `latency_ms` last, so when it equals `reserved_latency_ms` the named one stays.
    for run, percentiles in sorted(latencies.items(), key=lambda kv: kv[0].endswith(" latency")):
        if percentiles in shown:
            continue
        shown.append(percentiles)
        bars += [(f"{run} {p} (ms)", v, "tab:orange") for p, v in percentiles.items()]
    if with_rss:
        rss = result.get("rss_mb") or {}
        bars += [(f"peak RSS {name} (MiB)", float(mb), "tab:gray") for name, mb in rss.items()]
    return bars


def _summary_panel(ax: Axes, result: Mapping[str, Any], bars: list[tuple[str, float, str]]) -> None:
    """Horizontal bars, each labelled with its number; units differ, so the scale is symlog."""
    values = [value for _, value, _ in bars]
    positions = list(range(len(bars)))
    drawn = ax.barh(positions, values, color=[colour for _, _, colour in bars])
    ax.bar_label(drawn, labels=[f"{v:,.1f}" for v in values], padding=3, fontsize=7)
    ax.set_yticks(positions, labels=[label for label, _, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("value (symlog scale: units differ per bar)")
    if "series" not in result:
        ax.set_title("summary (this run recorded no time series)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


# -- chaos ----------------------------------------------------------------------------------


def classify(note: str) -> tuple[str, str, str]:
    """(kind, colour, marker) of a timeline note; plain notes are "note"."""
    for kind, pattern, colour, marker in EVENT_KINDS:
        if pattern.search(note):
            return kind, colour, marker
    return "note", NOTE_COLOUR, "."


def chaos_events(scenario: Mapping[str, Any]) -> list[tuple[float, str, str]]:
    """(seconds, kind, note) of a scenario, without the first start of each process."""
    events = []
    for at, note in (scenario.get("notes") or {}).get("timeline") or []:
        text = str(note)
        kind = classify(text)[0]
        # "started api" is start-up; "started api.2" (after a kill) and "broker started"
        # (after a stop) are restarts.
        if kind == "restart" and text.startswith("started ") and "." not in text.split()[-1]:
            continue
        events.append((float(at), kind, text))
    return events


def _spans(
    scenario: Mapping[str, Any], events: Sequence[tuple[float, str, str]]
) -> Iterator[tuple[float, float, str, str]]:
    outage = next((t for t, kind, _ in events if kind == "outage"), None)
    back = next((t for t, kind, _ in events if kind == "back"), None)
    if outage is not None:
        yield outage, back if back is not None else outage, "tab:orange", "outage"
    drained = next((t for t, kind, _ in events if kind == "drained"), None)
    if drained is not None:
        yield drained - float(scenario.get("drain_seconds", 0)), drained, "tab:blue", "drain"


def write_chaos_chart(json_path: Path, out: Path | None = None) -> Path:
    body = json.loads(json_path.read_text())
    scenarios: list[Mapping[str, Any]] = body.get("scenarios") or []
    if not scenarios:
        raise ValueError(f"{json_path}: no scenarios to draw")
    height = 1.2 + 0.75 * max(len(scenarios), 1)
    figure = Figure(figsize=(WIDTH + 2, height), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    for row, scenario in enumerate(scenarios):
        events = chaos_events(scenario)
        for start, end, colour, _ in _spans(scenario, events):
            ax.barh(row, end - start, left=start, height=0.5, color=colour, alpha=0.25)
        for at, kind, note in events:
            _, colour, marker = classify(note)
            ax.scatter([at], [row], color=colour, marker=marker, s=60, zorder=3)
            if kind not in {"drained", "note"}:  # notes would overlap their event's label
                ax.annotate(
                    note,
                    (at, row),
                    xytext=(3, 7),
                    textcoords="offset points",
                    fontsize=6,
                    color=colour,
                    rotation=12,
                )
        verdict = "ok" if not scenario.get("lost") and not scenario.get("duplicates") else "FAILED"
        ax.annotate(
            f"{scenario.get('orders')} orders, lost {scenario.get('lost')}, "
            f"dup {scenario.get('duplicates')}, "
            f"drain {scenario.get('drain_seconds')} s ({verdict})",
            (float(scenario.get("wall_seconds") or 0), row),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=6,
            ha="right",
        )
    ax.set_yticks(
        range(len(scenarios)),
        labels=[f"{s.get('scenario')} ({s.get('broker')})" for s in scenarios],
        fontsize=8,
    )
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the scenario's processes started")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    kinds = {kind for s in scenarios for _, kind, _ in chaos_events(s)}
    for kind, _, colour, marker in EVENT_KINDS:
        if kind in kinds:  # empty artists: the legend's entries, in a fixed order
            ax.scatter([], [], color=colour, marker=marker, label=kind)
    ax.barh([], [], color="tab:orange", alpha=0.25, label="outage")
    ax.barh([], [], color="tab:blue", alpha=0.25, label="drain")
    ax.legend(loc="lower right", fontsize=7, ncols=4)
    totals = body.get("totals") or {}
    figure.suptitle(
        f"chaos ({body.get('scale')} scale): {totals.get('orders', '?')} orders, "
        f"lost {totals.get('lost', '?')}, duplicates {totals.get('duplicates', '?')}, "
        f"restarts {totals.get('restarts', '?')}",
        fontsize=10,
    )
    target = out or chart_path(json_path)
    figure.savefig(target)
    return target


# -- command line ---------------------------------------------------------------------------


def write_chart(json_path: Path) -> Path:
    if json_path.name.startswith("chaos"):
        return write_chaos_chart(json_path)
    return write_bench_chart(json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redraw the charts of bench and chaos results.")
    parser.add_argument("files", nargs="*", type=Path, help="default: every result in results/")
    args = parser.parse_args(argv)
    files = args.files or sorted(
        [*RESULTS_DIR.rglob("bench-*.json"), *RESULTS_DIR.rglob("chaos.json")]
    )
    for path in files:
        sys.stdout.write(f"{write_chart(path)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
