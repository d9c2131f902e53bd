"""The ops console under load: what open pages cost, and whether they stay usable.

On one stack (`steadfast-local run`, Prometheus included when installed), the load
generator offers 600 orders/s three times for the same length: with no page open, then
with `--pages` signed-in pages polling as `services/console/static/console.js` does
(`/api/overview` every 2 s, `/api/charts` every 15 s), then with none again. The
figures: each refresh's latency as a page sees it (p50 / p99 / max), the console's CPU
per refresh and share of a core, what the pages added to every process's CPU
(PostgreSQL's and the broker's too) against the mean of the two runs without, and the
orders/s achieved with and without them. On 2 cores the pipeline saturates well below
600 orders/s, so this is the console on a machine with no CPU to spare, its worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.bench_e2e import CpuMeter, load, load_target, private_postgres, running_stack
from bench.common import (
    BenchResult,
    RssSampler,
    Target,
    WalMeter,
    bench_infra,
    report,
)
from local.load.report import Summary, percentiles

NAME = "console"
OFFERED_RATE = 600.0
# console.js's cadence.
OVERVIEW_SECONDS, CHARTS_SECONDS = 2.0, 15.0
# Usable: a refresh answers well inside the page's own 2 s cadence.
TARGET_P99_REFRESH_MS = 1000.0
TARGET_CONSOLE_CORE_SHARE = 0.05


@dataclass
class Pages:
    """`count` signed-in pages polling the console in a thread of their own."""

    base_url: str
    token: str
    count: int
    latencies_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"overview": [], "charts": []}
    )
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Pages:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(CHARTS_SECONDS + 10)

    async def _run(self) -> None:
        await asyncio.gather(*(self._page(n) for n in range(self.count)))

    async def _page(self, n: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            signed = await client.post("/api/session", json={"token": self.token})
            signed.raise_for_status()
            # Pages opened at different moments, as people do.
            await asyncio.sleep(n * OVERVIEW_SECONDS / max(self.count, 1))
            next_charts = time.monotonic()
            while not self._stop.is_set():
                await self._get(client, "overview")
                if time.monotonic() >= next_charts:
                    await self._get(client, "charts")
                    next_charts += CHARTS_SECONDS
                await asyncio.sleep(OVERVIEW_SECONDS)

    async def _get(self, client: httpx.AsyncClient, what: str) -> None:
        started = time.perf_counter()
        try:
            response = await client.get(f"/api/{what}")
            response.raise_for_status()
        except httpx.HTTPError:
            self.failures += 1
            return
        self.latencies_ms[what].append((time.perf_counter() - started) * 1000)

    @property
    def refreshes(self) -> int:
        return sum(len(v) for v in self.latencies_ms.values())


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = {k: round(v, 1) for k, v in percentiles(values, (50, 99)).items()}
    return {**cuts, "max": round(max(values), 1)}


def _measured_run(
    target: Any, cpu: CpuMeter, wal: WalMeter, seconds: float, pages: Pages | None
) -> tuple[Summary, dict[str, float]]:
    wal.start()
    cpu.start()
    with pages if pages is not None else contextlib.nullcontext():
        summary = load(target, None, rate=OFFERED_RATE, seconds=seconds)
    cpu.stop()
    wal.stop()
    return summary, dict(cpu.seconds)


def run(*, pages: int, seconds: float, warmup: int) -> tuple[BenchResult, dict[str, Any]]:
    with (
        private_postgres(True, NAME),
        bench_infra(NAME) as infra,
        running_stack(infra, "INFO", prometheus=True, name=NAME) as stack,
    ):
        pids = {name: int(pid) for name, pid in stack.endpoints["pids"].items()}
        target = load_target(stack, infra.topic)
        with RssSampler(pids) as rss:
            load(target, None, concurrency=16, count=warmup)
            cpu = CpuMeter.on(pids, infra)
            wal = WalMeter(infra.database_url)
            # The run with pages sits between two without, so drift (a growing database,
            # the broker's segments) shows as the gap between the two, not as page cost.
            before, before_cpu = _measured_run(target, cpu, wal, seconds, None)
            wal_before = wal.per(before.placed)
            poller = Pages(stack.endpoints["console"], stack.endpoints["admin_token"], pages)
            watched, watched_cpu = _measured_run(target, cpu, wal, seconds, poller)
            wal_watched = wal.per(watched.placed)
            after, after_cpu = _measured_run(target, cpu, wal, seconds, None)
            wal_after = wal.per(after.placed)
            peak = rss.peak_mb()
        prometheus = bool(stack.endpoints.get("prometheus"))
    alone_cpu = {
        k: (before_cpu.get(k, 0.0) + after_cpu.get(k, 0.0)) / 2
        for k in set(before_cpu) | set(after_cpu)
    }
    wal_alone = round(((wal_before or 0) + (wal_after or 0)) / 2)
    console_name = next(name for name in pids if name.startswith("console"))
    console_seconds = watched_cpu.get(console_name, 0.0)
    overview = _percentiles(poller.latencies_ms["overview"])
    charts = _percentiles(poller.latencies_ms["charts"])
    added = {
        name: round(watched_cpu.get(name, 0.0) - alone_cpu.get(name, 0.0), 2)
        for name in sorted(set(alone_cpu) | set(watched_cpu))
    }
    core_share = console_seconds / seconds
    details = {
        "offered_orders_per_second": OFFERED_RATE,
        "seconds": seconds,
        "pages": pages,
        "prometheus_running": prometheus,
        "refresh_ms": {"overview": overview, "charts": charts},
        "refreshes": poller.refreshes,
        "refresh_failures": poller.failures,
        "console_cpu_seconds": round(console_seconds, 2),
        "console_cpu_ms_per_refresh": round(1000 * console_seconds / max(poller.refreshes, 1), 2),
        "console_core_share": round(core_share, 4),
        "cpu_seconds_alone": {k: round(v, 2) for k, v in alone_cpu.items()},
        "cpu_seconds_with_pages": {k: round(v, 2) for k, v in watched_cpu.items()},
        "cpu_seconds_added_by_pages": added,
        "final_per_second_alone": round((before.final_per_second + after.final_per_second) / 2, 1),
        "final_per_second_before_and_after": [before.final_per_second, after.final_per_second],
        "final_per_second_with_pages": watched.final_per_second,
        "placed_per_second_alone": round(
            (before.placed_per_second + after.placed_per_second) / 2, 1
        ),
        "placed_per_second_with_pages": watched.placed_per_second,
        # The whole server's WAL over each run, per order placed in it.
        "wal_bytes_per_order_alone": wal_alone,
        "wal_bytes_per_order_with_pages": wal_watched,
    }
    result = BenchResult(
        name=NAME,
        metric="p99 refresh ms",
        value=overview.get("p99", float("inf")),
        target=Target.at_most(TARGET_P99_REFRESH_MS),
        rss_mb=peak,
        broker=infra.broker_kind,
        checks={
            f"console_under_{TARGET_CONSOLE_CORE_SHARE:.0%}_of_a_core": core_share
            <= TARGET_CONSOLE_CORE_SHARE,
            "every_refresh_answered": poller.failures == 0 and poller.refreshes > 0,
            "nothing_lost": before.lost == 0 and watched.lost == 0 and after.lost == 0,
        },
        details=details,
    )
    return result, details


def figures_table(details: dict[str, Any]) -> Table:
    table = Table(
        title=f"bench console: {details['pages']} pages at {OFFERED_RATE:.0f} orders/s offered"
    )
    table.add_column("measurement")
    table.add_column("no page open (mean of the runs before and after)", justify="right")
    table.add_column("pages open", justify="right")
    table.add_row(
        "orders final/s",
        f"{details['final_per_second_alone']:,.0f}",
        f"{details['final_per_second_with_pages']:,.0f}",
    )
    table.add_row(
        "orders placed/s",
        f"{details['placed_per_second_alone']:,.0f}",
        f"{details['placed_per_second_with_pages']:,.0f}",
    )
    for what, cuts in details["refresh_ms"].items():
        if cuts:
            table.add_row(
                f"/api/{what} ms p50 / p99 / max",
                "",
                f"{cuts['p50']:.0f} / {cuts['p99']:.0f} / {cuts['max']:.0f}",
            )
    table.add_row(
        "PostgreSQL WAL bytes per order",
        f"{details['wal_bytes_per_order_alone'] or 0:,}",
        f"{details['wal_bytes_per_order_with_pages'] or 0:,}",
    )
    table.add_row(
        "console CPU ms per refresh (share of a core)",
        "",
        f"{details['console_cpu_ms_per_refresh']:.1f} ({details['console_core_share']:.1%})",
    )
    for name, added in details["cpu_seconds_added_by_pages"].items():
        table.add_row(
            f"  CPU s: {name}",
            f"{details['cpu_seconds_alone'].get(name, 0.0):.1f}",
            f"{details['cpu_seconds_with_pages'].get(name, 0.0):.1f} ({added:+.1f})",
        )
    return table


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=3, help="signed-in pages polling")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each run")
    parser.add_argument("--warmup", type=int, default=500, help="orders before measuring")
    args = parser.parse_args(argv)
    if args.pages < 1 or not 5 <= args.seconds <= 600:
        parser.error("--pages >= 1 and --seconds between 5 and 600")
    result, details = run(pages=args.pages, seconds=args.seconds, warmup=args.warmup)
    Console().print(figures_table(details))
    report(result)
    return result


if __name__ == "__main__":
    main()
