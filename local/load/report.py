"""The outcome of a run: counts, throughput, latency percentiles; as a table and as JSON.

Percentiles use `statistics.quantiles` with the inclusive method (the same interpolation
as numpy's default), so p99 of a few hundred values is an interpolated value within the
sample, never outside it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PERCENTILES = (50, 95, 99)


def percentiles(values: Sequence[float], points: Sequence[int] = PERCENTILES) -> dict[str, float]:
    """{"p50": …} for each point; {} when there is nothing to measure."""
    if not values:
        return {}
    if len(values) == 1:
        return {f"p{p}": float(values[0]) for p in points}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] for p in points}


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


@dataclass
class Summary:
    run_id: str
    mode: str
    """"rate" or "concurrency"."""
    mix: str
    target_rate: float | None
    concurrency: int | None
    faults: dict[str, Any] | None
    attempted: int = 0
    placed: int = 0
    placement_errors: dict[str, int] = field(default_factory=dict)
    reserved: int = 0
    rejected: int = 0
    dead: int = 0
    cancelled: int = 0
    still_pending: int = 0
    missing: int = 0
    lost: int = 0
    duplicates: int | None = None
    """New duplicate reservations at the warehouse; None when its stats were not read."""
    warehouse_reservations: int | None = None
    unexpected: dict[str, dict[str, int]] = field(default_factory=dict)
    """Kind → final status → count, for orders that ended other than their kind should."""
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    poison_injected: int = 0
    poison_dead_lettered: int = 0
    poison_other: dict[str, int] = field(default_factory=dict)
    placement_seconds: float = 0.0
    final_window_seconds: float = 0.0
    settle_seconds: float = 0.0
    placed_per_second: float = 0.0
    final_per_second: float = 0.0
    schedule_lag_max_seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Placement (order created_at) → final (finalized_at), every final order."""
    reserved_latency_ms: dict[str, float] = field(default_factory=dict)
    api_latency_ms: dict[str, float] = field(default_factory=dict)
    """POST /orders round trip as the load generator saw it."""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and not self.duplicates
            and self.poison_dead_lettered == self.poison_injected
        )

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} order(s) lost (not final in time)")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate reservation(s) at the warehouse")
        if self.poison_dead_lettered != self.poison_injected:
            found.append(
                f"{self.poison_injected - self.poison_dead_lettered} poison event(s) "
                "not dead-lettered"
            )
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = self.problems
        return data

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def _ms(values: dict[str, float]) -> str:
    return " / ".join(f"{values[f'p{p}']:.0f}" for p in PERCENTILES) if values else "-"


def table(summary: Summary) -> Table:
    t = Table(title=f"steadfast-load run {summary.run_id}", show_header=True)
    t.add_column("figure")
    t.add_column("value", justify="right")
    pace = (
        f"{summary.target_rate:g}/s target"
        if summary.mode == "rate"
        else f"{summary.concurrency} clients"
    )
    rows: list[tuple[str, str]] = [
        ("mode", pace),
        ("mix", summary.mix),
        ("placed", str(summary.placed)),
        ("placement errors", str(sum(summary.placement_errors.values()))),
        ("reserved", str(summary.reserved)),
        ("rejected", str(summary.rejected)),
        ("dead", str(summary.dead)),
        ("cancelled", str(summary.cancelled)),
        ("still pending", str(summary.still_pending)),
        ("lost", str(summary.lost)),
        (
            "duplicates at warehouse",
            "unknown" if summary.duplicates is None else str(summary.duplicates),
        ),
        (
            "poison injected / dead-lettered",
            f"{summary.poison_injected} / {summary.poison_dead_lettered}",
        ),
        ("placed/s", f"{summary.placed_per_second:.1f}"),
        ("final/s", f"{summary.final_per_second:.1f}"),
        ("placement→final p50/p95/p99 ms", _ms(summary.latency_ms)),
        ("placement→RESERVED p50/p95/p99 ms", _ms(summary.reserved_latency_ms)),
        ("POST /orders p50/p95/p99 ms", _ms(summary.api_latency_ms)),
    ]
    if summary.unexpected:
        rows.append(("unexpected outcomes", json.dumps(summary.unexpected)))
    for label, value in rows:
        t.add_row(label, value)
    return t


def print_summary(summary: Summary, console: Console) -> None:
    console.print(table(summary))
    if summary.ok:
        console.print("[green]OK[/green]: every order final, no duplicates, poison parked")
    else:
        for problem in summary.problems:
            console.print(f"[red]FAIL[/red]: {problem}")
