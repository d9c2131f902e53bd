"""End to end: the whole stack (launcher, every process) driven by `steadfast-load`.

Two measurements on one stack, after a warm-up run:

- **throughput**: N closed-loop clients place healthy orders for D seconds; the figure
  is *final orders per second*, from the first order's creation to the last one's
  finalisation (the rate the pipeline turns orders into RESERVED, not just the rate the
  API accepts them);
- **latency**: an open-loop 300 orders/s for D seconds; the figure is p99 of placement
  (the order's `created_at`) to RESERVED (its `finalized_at`), both database times.

At the default log level (INFO: the journey logs are part of the product). Every order
must end final, with no order reserved twice at the warehouse. CPU per order is measured
per process (ours, PostgreSQL's backends, the broker's JVM) over the throughput run.
py-spy (when installed; `--no-profile` skips it) samples the API and the consumer during
a separate profiled run and writes flame graphs (SVG) under `results/profile-e2e/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.common import (
    RESULTS_DIR,
    STATE_DIR,
    BenchInfra,
    BenchResult,
    RssSampler,
    Target,
    bench_infra,
    report,
    run_bounded,
)
from local import infra as local_infra
from local.load.report import Summary, print_summary
from local.load.run import LoadConfig, run_load
from local.load.runner import Budget
from local.load.target import Target as LoadTarget
from local.load.workload import Mix

NAME = "e2e"
TARGET_ORDERS_PER_SECOND = 600
TARGET_PIPELINE_CPU_MS = 2.5
TARGET_RSS_MB = 200
LATENCY_RATE = 300.0
TARGET_P99_MS = 250.0
# Our processes, whose CPU the pipeline target counts (not PostgreSQL, the broker or the
# load generator, reported beside them).
OURS = ("api", "relay", "consumer", "scheduler", "warehouse")
LAUNCHER = Path(sys.executable).parent / "steadfast-local"
PROFILED = ("api-1", "consumer-1")


class Stack:
    """`steadfast-local run` on the bench's database and broker, stopped on exit."""

    def __init__(
        self,
        infra: BenchInfra,
        state_dir: Path,
        env: dict[str, str],
        *,
        prometheus: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        self.endpoints_path = state_dir / "run" / "endpoints.json"
        self.log_path = infra.log_dir / "stack.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(LAUNCHER),
                    "run",
                    "--state-dir",
                    str(state_dir),
                    *(() if prometheus else ("--no-prometheus",)),
                    *args,
                ],
                env=infra.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.endpoints: dict[str, Any] = {}

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"launcher exited early:\n{self.tail()}")
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.endpoints_path.read_text())
            if data.get("launcher_pid") == self.process.pid and data.get("ready"):
                self.endpoints = data
                return True
        return False

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def private_postgres(enabled: bool, name: str = NAME) -> Iterator[None]:
    """An embedded PostgreSQL for this bench alone (STEADFAST_DATABASE_URL points at it).

    On a shared machine the server on :5432 serves everyone's tests, and its 100
    connections run out: a bench must not fail, or measure, because of that.
    """
    if not enabled or os.environ.get("STEADFAST_DATABASE_URL"):
        yield
        return
    pg = local_infra.start_embedded_postgres(STATE_DIR / name / "postgres")
    os.environ["STEADFAST_DATABASE_URL"] = pg.url
    try:
        yield
    finally:
        os.environ.pop("STEADFAST_DATABASE_URL", None)
        pg.stop()


@contextlib.contextmanager
def running_stack(
    infra: BenchInfra,
    log_level: str,
    *,
    prometheus: bool = False,
    name: str = NAME,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """The stack, without Prometheus unless asked for (its scrapes are not the pipeline's);
    `env` on top of the bench's, `args` to `steadfast-local run` (e.g. `--scale`)."""
    stack = Stack(
        infra,
        STATE_DIR / name / "stack",
        {"STEADFAST_LOG_LEVEL": log_level, **(env or {})},
        prometheus=prometheus,
        args=args,
    )
    try:
        run_bounded(stack.ready, timeout=90, what="stack ready", interval=0.2)
        yield stack
    finally:
        stack.stop()


def load_target(stack: Stack, topic: str) -> LoadTarget:
    e = stack.endpoints
    return LoadTarget(
        api=e["reservation_api"],
        warehouse=e["warehouse_mock"],
        admin_token=e["admin_token"],
        kafka_bootstrap=e["kafka_bootstrap_servers"],
        topic=topic,
    )


def load(target: LoadTarget, console: Console | None, **kwargs: Any) -> Summary:
    rate = kwargs.pop("rate", None)
    count = kwargs.pop("count", None)
    seconds = kwargs.pop("seconds", None)
    config = LoadConfig(
        target=target,
        mix=Mix.parse("healthy=100"),
        budget=Budget.of(count, seconds, rate),
        rate=rate,
        settle_timeout=120.0,
        poll_interval=1.0,
        **kwargs,
    )
    return asyncio.run(run_load(config, console=console))


class CpuMeter:
    """CPU seconds (user + system) each process spent between `start` and `stop`.

    Unlike throughput, CPU time per order barely depends on what else the machine runs,
    so it names the bottleneck even on a shared, oversubscribed box. PostgreSQL is
    counted as the backends serving the bench's own database.
    """

    def __init__(self, pids: dict[str, int], database: str, broker_pids: list[int]) -> None:
        self._pids = {**pids, "load generator": os.getpid()}
        self._broker = broker_pids
        self._database = database
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    @classmethod
    def on(cls, pids: dict[str, int], infra: BenchInfra) -> CpuMeter:
        """For a stack on `infra`: its database's backends and the brokers it started."""
        return cls(pids, infra.database_url.rsplit("/", 1)[-1], infra.broker_pids)

    def _sample(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, pid in self._pids.items():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                # This process alone: its children are the launcher, i.e. the stack.
                tree = [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
                found[name] = sum(sum(p.cpu_times()[:2]) for p in tree)
        postgres = 0.0
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if f" {self._database} " in " ".join(proc.info["cmdline"] or []) + " ":
                    postgres += sum(proc.cpu_times()[:2])
        found["postgres"] = postgres
        broker = 0.0
        for pid in self._broker:
            with contextlib.suppress(psutil.Error):
                broker += sum(psutil.Process(pid).cpu_times()[:2])
        found["kafka broker"] = broker
        return found

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        end = self._sample()
        self.seconds = {k: end[k] - self._start.get(k, 0.0) for k in end}

    def ms_per(self, orders: int) -> dict[str, float]:
        return {k: round(1000 * v / orders, 2) for k, v in self.seconds.items()} if orders else {}


@contextlib.contextmanager
def profiled(pids: dict[str, int], seconds: float, out_dir: Path | None) -> Iterator[None]:
    """py-spy record of each process for `seconds`, when asked for and installed."""
    spy = (
        os.environ.get("PY_SPY")
        or shutil.which("py-spy")
        or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    )
    if out_dir is None or not spy:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "--nonblocking",
             "-o", str(out_dir / f"{name}.svg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name in PROFILED
    ]  # fmt: skip
    try:
        yield
    finally:
        for proc in procs:
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(
    *,
    clients: int = 64,
    seconds: float = 60.0,
    latency_rate: float = LATENCY_RATE,
    warmup: int = 500,
    log_level: str = "INFO",
    profile_dir: Path | None = None,
    broker: str | None = None,
    own_postgres: bool = True,
    quiet: bool = False,
) -> tuple[BenchResult, Summary, Summary]:
    console = None if quiet else Console(stderr=True)
    with (
        private_postgres(own_postgres),
        bench_infra(NAME, broker=broker) as infra,
        running_stack(infra, log_level) as stack,
    ):
        pids = {name: int(pid) for name, pid in stack.endpoints["pids"].items()}
        target = load_target(stack, infra.topic)
        with RssSampler(pids) as rss:
            # Pools, the consumer group's assignment and the relay's first claim are
            # start-up costs, not throughput.
            load(target, None, concurrency=16, count=warmup)
            cpu = CpuMeter.on(pids, infra)
            load_before = os.getloadavg()
            cpu.start()
            throughput = load(target, console, concurrency=clients, seconds=seconds)
            cpu.stop()
            latency = load(target, console, rate=latency_rate, seconds=seconds)
            # Sampling costs CPU itself: profiled on a run of its own, not the measured one.
            with profiled(pids, min(seconds, 20.0), profile_dir):
                load(target, None, concurrency=clients, seconds=min(seconds, 20.0))
            peak = rss.peak_mb()
            per_process = {name: round(mb, 1) for name, mb in peak.items()}
        load_average = os.getloadavg()
    p99 = latency.reserved_latency_ms.get("p99", float("inf"))
    cpu_ms = cpu.ms_per(throughput.placed)
    pipeline_ms = sum(v for k, v in cpu_ms.items() if k.split("-")[0] in OURS)
    result = BenchResult(
        name=NAME,
        metric="orders/s",
        value=throughput.final_per_second,
        target=Target.at_least(TARGET_ORDERS_PER_SECOND),
        rss_mb=peak,
        broker=infra.broker_kind,
        checks={
            f"p99_reserved_under_{TARGET_P99_MS:.0f}ms_at_{latency_rate:.0f}_per_s": p99
            < TARGET_P99_MS,
            f"pipeline_cpu_at_most_{TARGET_PIPELINE_CPU_MS}ms_per_order": pipeline_ms
            <= TARGET_PIPELINE_CPU_MS,
            f"every_process_rss_under_{TARGET_RSS_MB}mb": all(
                mb < TARGET_RSS_MB for mb in per_process.values()
            ),
            "nothing_lost": throughput.lost == 0 and latency.lost == 0,
            "no_duplicates": not throughput.duplicates and not latency.duplicates,
        },
        details={
            "clients": clients,
            "seconds": seconds,
            "log_level": log_level,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_average],
            "cpu_ms_per_order": cpu_ms,
            "pipeline_cpu_ms_per_order": round(pipeline_ms, 2),
            "peak_rss_mb_by_process": per_process,
            "profiles": sorted(str(p) for p in profile_dir.glob("*.svg")) if profile_dir else [],
            # What 2 cores could do if the pipeline had them to itself: a ceiling, not a
            # measurement (it ignores waits, and the load generator's own share).
            "projected_orders_per_second_on_2_free_cores": round(2000 / pipeline_ms, 1)
            if pipeline_ms
            else None,
            "p99_reserved_ms_at_latency_rate": p99,
            "throughput_run": throughput.to_json(),
            "latency_run": latency.to_json(),
        },
    )
    return result, throughput, latency


def figures_table(result: BenchResult, throughput: Summary, latency: Summary) -> Table:
    table = Table(title="bench e2e: figures")
    for column in ("measurement", "measured", "target", "met"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    p99 = latency.reserved_latency_ms.get("p99", float("nan"))
    rows = [
        (
            f"sustained orders/s ({throughput.concurrency} clients, final/s)",
            f"{throughput.final_per_second:,.0f}",
            f">= {TARGET_ORDERS_PER_SECOND:,}",
            throughput.final_per_second >= TARGET_ORDERS_PER_SECOND,
        ),
        (
            "  accepted by the API (placed/s)",
            f"{throughput.placed_per_second:,.0f}",
            "",
            None,
        ),
        (
            f"p99 placement→RESERVED at {latency.target_rate:g}/s (ms)",
            f"{p99:,.0f}",
            f"< {TARGET_P99_MS:.0f}",
            p99 < TARGET_P99_MS,
        ),
        (
            "  achieved rate (placed/s), p50 / p95 ms",
            f"{latency.placed_per_second:,.0f}",
            f"{latency.reserved_latency_ms.get('p50', 0):.0f} / "
            f"{latency.reserved_latency_ms.get('p95', 0):.0f}",
            None,
        ),
    ]
    for label, measured, target, met in rows:
        verdict = "" if met is None else ("[green]yes" if met else "[red]no")
        table.add_row(label, measured, target, verdict)
    return table


def cpu_table(result: BenchResult) -> Table:
    table = Table(title="bench e2e: CPU per order (throughput run)")
    table.add_column("process")
    table.add_column("CPU ms/order", justify="right")
    cpu_ms: dict[str, float] = result.details["cpu_ms_per_order"]
    for name, ms in sorted(cpu_ms.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{ms:.2f}")
    table.add_row(
        f"pipeline: {', '.join(OURS)} (target <= {TARGET_PIPELINE_CPU_MS})",
        f"{result.details['pipeline_cpu_ms_per_order']:.2f}",
    )
    projected = result.details["projected_orders_per_second_on_2_free_cores"]
    table.add_row("→ ceiling on 2 free cores, orders/s", f"{projected:,.0f}" if projected else "-")
    return table


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=64, help="throughput run's clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=LATENCY_RATE, help="latency run's rate")
    parser.add_argument("--warmup", type=int, default=500, help="orders before measuring")
    parser.add_argument("--log-level", default="INFO", help="the processes' log level")
    parser.add_argument("--broker", choices=local_infra.BROKERS, default=None)
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy flame graphs")
    parser.add_argument(
        "--shared-postgres",
        action="store_true",
        help="use STEADFAST_DATABASE_URL or :5432 rather than a private embedded server",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    result, throughput, latency = run(
        clients=args.clients,
        seconds=args.seconds,
        latency_rate=args.rate,
        warmup=args.warmup,
        log_level=args.log_level,
        profile_dir=None if args.no_profile else RESULTS_DIR / "profile-e2e",
        broker=args.broker,
        own_postgres=not args.shared_postgres,
        quiet=args.quiet,
    )
    console = Console()
    for summary in (throughput, latency):
        print_summary(summary, console)
    console.print(figures_table(result, throughput, latency))
    console.print(cpu_table(result))
    report(result)
    return result


if __name__ == "__main__":
    main()
