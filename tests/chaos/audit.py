"""What a chaos scenario must end with, counted from the database, the warehouse mock's
stats and the clients' own record; and the table and JSON the full run reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench.charts
from tests.chaos.harness import FINAL, ChaosStack
from tests.chaos.load import LoadRunner

RESULTS_PATH = Path(__file__).resolve().parents[2] / "results" / "chaos.json"


@dataclass
class ScenarioResult:
    scenario: str
    broker: str
    orders: int
    """Orders the clients offered."""
    acknowledged: int
    """Answered 202 (possibly after retries with the same Idempotency-Key)."""
    in_db: int
    reserved: int
    rejected: int
    dead: int
    lost: int
    """Acknowledged orders missing from the database or not in a final state."""
    duplicates: int
    """Orders the warehouse reserved more than once, plus reservations still held beyond
    the RESERVED orders (a cancelled order's released reservation is not held)."""
    half_written: int
    """Orders without their OrderPlaced outbox row, or outbox rows without their order."""
    without_reason: int
    """Final orders with no reason, or whose journey does not end in their status."""
    drain_seconds: float
    restarts: int
    unanswered_tries: int
    wall_seconds: float = 0.0
    crashes: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = [
            f"{what}={value}"
            for what, value in (
                ("lost", self.lost),
                ("duplicates", self.duplicates),
                ("half_written", self.half_written),
                ("without_reason", self.without_reason),
            )
            if value
        ]
        if self.acknowledged != self.orders:
            found.append(f"only {self.acknowledged}/{self.orders} orders acknowledged")
        found += [f"{name} crashed: {lines[:3]}" for name, lines in self.crashes.items()]
        return found


def audit(
    stack: ChaosStack,
    load: LoadRunner,
    *,
    scenario: str,
    drain_seconds: float,
    expected_errors: Callable[[dict[str, Any]], bool],
) -> ScenarioResult:
    acked = load.acknowledged()
    orders = {
        order_id: (status, reason, key, last)
        for order_id, status, reason, key, last in stack.query(
            """
            SELECT o.id::text, o.status, o.status_reason, o.idempotency_key,
                   (SELECT h.status FROM order_status_history h
                     WHERE h.order_id = o.id ORDER BY h.id DESC LIMIT 1)
              FROM orders o
            """
        )
    }
    placed_events = {
        aggregate
        for (aggregate,) in stack.query(
            "SELECT aggregate_id FROM outbox WHERE headers->>'event_type' = 'OrderPlaced'"
        )
    }
    counts: dict[str, int] = {}
    for status, _, _, _ in orders.values():
        counts[status] = counts.get(status, 0) + 1
    lost = sum(
        1
        for key, order_id in acked.items()
        if order_id not in orders or orders[order_id][0] not in FINAL or orders[order_id][2] != key
    )
    without_reason = sum(
        1
        for status, reason, _, last in orders.values()
        if status in FINAL and (not reason or last != status)
    )
    half_written = len(set(orders) ^ placed_events)
    stats = stack.pipe.warehouse_stats()
    reserved = counts.get("RESERVED", 0)
    # Per order id at the warehouse: creations beyond the first, under any key; and
    # reservations still held beyond the RESERVED orders (a cancel releases its own).
    duplicates = int(stats["orders_reserved_more_than_once"]) + max(
        0, stats["reservations"] - stats["releases"] - reserved
    )
    summary = load.summary()
    return ScenarioResult(
        scenario=scenario,
        broker=stack.broker.kind,
        orders=load.total,
        acknowledged=len(acked),
        in_db=len(orders),
        reserved=reserved,
        rejected=counts.get("REJECTED", 0),
        dead=counts.get("DEAD", 0),
        lost=lost,
        duplicates=duplicates,
        half_written=half_written,
        without_reason=without_reason,
        drain_seconds=round(drain_seconds, 1),
        restarts=stack.restarts,
        unanswered_tries=summary["unanswered_tries"],
        crashes=stack.crashes(expected_errors),
        notes={
            "warehouse_reservations": stats["reservations"],
            "warehouse_deflected": stats["duplicates_deflected"],
            "warehouse_faults": stats["faults"],
            "not_final": {s: n for s, n in counts.items() if s not in FINAL},
            "timeline": stack.events,
        },
    )


COLUMNS = (
    ("scenario", 20),
    ("broker", 6),
    ("orders", 7),
    ("reserved", 8),
    ("rejected", 8),
    ("dead", 5),
    ("lost", 5),
    ("duplicates", 10),
    ("drain s", 8),
    ("restarts", 8),
)


def table(results: Sequence[ScenarioResult]) -> str:
    def row(values: Sequence[object]) -> str:
        return (
            "| "
            + " | ".join(str(v).ljust(w) for v, (_, w) in zip(values, COLUMNS, strict=True))
            + " |"
        )

    lines = [row([name for name, _ in COLUMNS]), row(["-" * w for _, w in COLUMNS])]
    for r in results:
        lines.append(
            row(
                [
                    r.scenario,
                    r.broker,
                    r.orders,
                    r.reserved,
                    r.rejected,
                    r.dead,
                    r.lost,
                    r.duplicates,
                    f"{r.drain_seconds:.1f}",
                    r.restarts,
                ]
            )
        )
    if len(results) > 1:
        lines.append(
            row(
                [
                    "total",
                    "",
                    sum(r.orders for r in results),
                    sum(r.reserved for r in results),
                    sum(r.rejected for r in results),
                    sum(r.dead for r in results),
                    sum(r.lost for r in results),
                    sum(r.duplicates for r in results),
                    f"{max(r.drain_seconds for r in results):.1f} max",
                    sum(r.restarts for r in results),
                ]
            )
        )
    return "\n".join(lines)


def write_json(path: Path, scale: str, results: Sequence[ScenarioResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "scale": scale,
        "scenarios": [asdict(r) for r in results],
        "totals": {
            key: sum(int(getattr(r, key)) for r in results)
            for key in ("orders", "reserved", "rejected", "dead", "lost", "duplicates", "restarts")
        },
    }
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    bench.charts.write_chaos_chart(path)  # the timeline next to the JSON
