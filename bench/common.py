"""What every bench shares: targets, results, tables, RSS sampling and infrastructure.

The API, in the order a bench uses it::

    with bench_infra("relay", broker=args.broker) as infra:       # PostgreSQL + broker + db
        proc = start_process("relay", "steadfast-relay", infra)    # a real console script
        with RssSampler({"relay": proc.process.pid}) as rss:       # peak RSS per process
            ...                                                    # drive it, bounded
    result = BenchResult(name="relay", metric="events/s", value=rate,
                         target=Target.at_least(15_000), rss_mb=rss.peak_mb(),
                         broker=infra.broker_kind, details={...})
    report(result)    # prints the table, writes results/bench-relay.json and its .png

`drain` and `RssSampler` also record time series (items done, RSS per process) into
`TIMELINE`, which `report` writes under the result's `series` and charts
(`bench.charts`). They go through a shared recorder rather than `BenchResult(series=...)`
because each bench builds its own result; a bench may still pass `series` itself.

`Target`, `BenchResult`, `within_tolerance` and `machine_info` are pure; the rest touches
processes, sockets and files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from local import infra
from tests.processes import Proc, base_env, start, wait_until

__all__ = [
    "RSS_LIMIT_MB",
    "BenchInfra",
    "BenchResult",
    "Drain",
    "Proc",
    "RssSampler",
    "Target",
    "bench_infra",
    "drain",
    "machine_info",
    "print_table",
    "report",
    "run_bounded",
    "start_process",
    "wait_until",
    "within_tolerance",
    "write_result",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "results"
STATE_DIR = REPO / ".steadfast" / "bench"
RSS_LIMIT_MB = 200.0
"""Every process a bench starts must stay under this peak RSS."""
SERIES_STEP_SECONDS = 0.5
"""Time series keep at most one point per this many seconds: enough for a chart, small JSON."""


class Timeline:
    """Time series gathered while a bench runs; `report` takes them (and clears them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, dict[str, list[float | None]]] = {}

    def put(self, name: str, columns: dict[str, list[float | None]]) -> None:
        with self._lock:
            self._series[name] = columns

    def take(self) -> dict[str, dict[str, list[float | None]]]:
        with self._lock:
            series, self._series = self._series, {}
        return series


TIMELINE = Timeline()


def within_tolerance(measured: float, expected: float, tolerance: float) -> bool:
    """Whether `measured` is within ±`tolerance` (a fraction) of `expected`."""
    if expected <= 0 or tolerance < 0:
        raise ValueError("expected must be > 0 and tolerance >= 0")
    return abs(measured - expected) <= expected * tolerance


@dataclass(frozen=True, kw_only=True)
class Target:
    """A pass condition on one number: at least or at most `value`, or within ±`tolerance`."""

    kind: Literal["at_least", "at_most", "within"]
    value: float
    tolerance: float = 0.0

    @classmethod
    def at_least(cls, value: float) -> Target:
        return cls(kind="at_least", value=value)

    @classmethod
    def at_most(cls, value: float) -> Target:
        return cls(kind="at_most", value=value)

    @classmethod
    def within(cls, value: float, tolerance: float) -> Target:
        return cls(kind="within", value=value, tolerance=tolerance)

    def met(self, measured: float) -> bool:
        if self.kind == "at_least":
            return measured >= self.value
        if self.kind == "at_most":
            return measured <= self.value
        return within_tolerance(measured, self.value, self.tolerance)

    def describe(self) -> str:
        if self.kind == "at_least":
            return f">= {self.value:,.0f}"
        if self.kind == "at_most":
            return f"<= {self.value:,.1f}"
        return f"{self.value:,.0f} ±{self.tolerance:.0%}"


@dataclass(kw_only=True)
class BenchResult:
    """One bench's headline number, its target, and the peak RSS of each process it ran."""

    name: str
    metric: str
    """Unit of `value`, e.g. "events/s"."""
    value: float
    target: Target
    rss_mb: dict[str, float]
    """Peak RSS in MiB by process name ("relay", "warehouse-mock")."""
    broker: str
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping: counts, durations, settings, secondary checks."""
    checks: dict[str, bool] = field(default_factory=dict)
    """Extra pass/fail conditions (e.g. "breaker_did_not_flap") that `passed` includes."""
    series: dict[str, Any] = field(default_factory=dict)
    """Time series for the chart: {"progress": {"t": [...], "done": [...]}, "rss_mb": ...}."""

    @property
    def rss_ok(self) -> bool:
        return all(mb < RSS_LIMIT_MB for mb in self.rss_mb.values())

    @property
    def passed(self) -> bool:
        return self.target.met(self.value) and self.rss_ok and all(self.checks.values())

    def to_json(self, machine: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "bench": self.name,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": dict(machine),
            "metric": self.metric,
            "value": round(self.value, 1),
            "target": asdict(self.target),
            "target_met": self.target.met(self.value),
            "rss_mb": {k: round(v, 1) for k, v in self.rss_mb.items()},
            "rss_limit_mb": RSS_LIMIT_MB,
            "checks": self.checks,
            "passed": self.passed,
            "details": self.details,
            **({"series": self.series} if self.series else {}),
        }


def machine_info(broker: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "broker": broker,
        # Other work on the machine skews every number: keep the load next to them.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_result(result: BenchResult, results_dir: Path = RESULTS_DIR) -> Path:
    """Write `results/bench-<name>.json` atomically (a `.tmp` file, then a rename)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"bench-{result.name}.json"
    tmp = path.with_suffix(".json.tmp")
    payload = result.to_json(machine_info(result.broker))
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def print_table(results: Sequence[BenchResult], title: str = "steadfast benchmarks") -> None:
    table = Table(title=title)
    for column in ("bench", "metric", "measured", "target", "peak RSS MiB (< 200)", "result"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    for r in results:
        rss = ", ".join(f"{name} {mb:.0f}" for name, mb in r.rss_mb.items()) or "-"
        failed = [name for name, ok in r.checks.items() if not ok]
        verdict = "[green]pass" if r.passed else f"[red]FAIL {' '.join(failed)}".rstrip()
        table.add_row(r.name, r.metric, f"{r.value:,.0f}", r.target.describe(), rss, verdict)
    # Benches print nothing else to stdout, so the table is the report (STYLE's T20 is
    # about logging in services; a CLI's own output belongs on stdout).
    # Wide enough for a row per bench even when stdout is a pipe (rich falls back to 80).
    Console(width=max(shutil.get_terminal_size((140, 24)).columns, 140)).print(table)


def report(result: BenchResult, results_dir: Path = RESULTS_DIR) -> Path:
    """Print the one-row table, write the JSON and its chart; returns the JSON's path."""
    from bench.charts import write_bench_chart

    recorded = TIMELINE.take()
    if not result.series:
        result.series = recorded
    print_table([result], title=f"bench {result.name}")
    path = write_result(result, results_dir)
    try:
        write_bench_chart(path)
    except Exception:
        # The numbers are written; a chart that cannot be drawn must not fail the bench.
        log.exception("could not draw the chart of %s", path)
    return path


class RssSampler:
    """Samples the RSS of named process trees in a thread and keeps each one's peak.

    A process's children are counted with it (a process tree is one service), and a
    process that has exited keeps the peak it had.
    """

    def __init__(self, pids: Mapping[str, int], interval: float = 0.2) -> None:
        self._pids = dict(pids)
        self._interval = interval
        self._peak: dict[str, int] = dict.fromkeys(self._pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()
        self._points: list[tuple[float, dict[str, int]]] = []

    def add(self, name: str, pid: int) -> None:
        self._pids[name] = pid
        self._peak.setdefault(name, 0)

    def sample(self) -> None:
        now = {name: tree_rss(pid) for name, pid in list(self._pids.items())}
        for name, rss in now.items():
            self._peak[name] = max(self._peak.get(name, 0), rss)
        at = time.monotonic() - self._started
        if not self._points or at - self._points[-1][0] >= SERIES_STEP_SECONDS:
            self._points.append((at, now))

    def series(self) -> dict[str, list[float | None]]:
        """RSS MiB per process over time ({"t": [...], name: [...]}); None before it ran."""
        columns: dict[str, list[float | None]] = {"t": [round(t, 2) for t, _ in self._points]}
        for name in self._peak:
            columns[name] = [
                round(rss[name] / 2**20, 1) if rss.get(name) else None for _, rss in self._points
            ]
        return columns

    def peak_mb(self) -> dict[str, float]:
        self.sample()
        return {name: peak / 2**20 for name, peak in self._peak.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each process tree has used so far, by name.

        Less sensitive to other load on the machine than wall-clock rates, so it is the
        number to compare before and after an optimisation.
        """
        return {name: round(tree_cpu_seconds(pid), 2) for name, pid in self._pids.items()}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        TIMELINE.put("rss_mb", self.series())


def _tree(pid: int) -> list[psutil.Process]:
    """`pid` and its live descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and its descendants (0 once it is gone)."""
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by `pid` and its live descendants (0 once it is gone)."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class BenchInfra:
    """Where a bench's processes find PostgreSQL and the broker."""

    database_url: str
    """libpq form (`postgresql://…`), a database of its own, migrated."""
    bootstrap: str
    broker_kind: str
    topic: str
    partitions: int
    log_dir: Path
    broker_pids: list[int] = field(default_factory=list)
    """The broker processes this bench started (none for an external cluster)."""

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a steadfast process: ours, loopback, no inherited STEADFAST_*."""
        values = {
            "PYTHONUNBUFFERED": "1",
            "STEADFAST_DATABASE_URL": self.database_url,
            "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STEADFAST_KAFKA__TOPIC": self.topic,
            "STEADFAST_KAFKA__PARTITIONS": str(self.partitions),
            "STEADFAST_HOST": infra.LOOPBACK,
            "STEADFAST_METRICS_PORT": str(infra.free_port()),
            "STEADFAST_LOG_LEVEL": "INFO",  # as `make run`: log cost is part of the cost
        }
        values.update(extra or {})
        return base_env(values)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, **kwargs)


class WalMeter:
    """WAL bytes the PostgreSQL server wrote between `start` and `stop` (the whole server:
    a bench's own database is all that runs on a bench's embedded server)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._start: str | None = None
        self.bytes = 0

    def _lsn(self) -> str:
        with psycopg.connect(self._url) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def start(self) -> None:
        self._start = self._lsn()

    def stop(self) -> None:
        assert self._start is not None, "WalMeter.stop() before start()"
        end = self._lsn()
        with psycopg.connect(self._url) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(%s, %s)::bigint", (end, self._start)
            ).fetchone()
        assert row is not None
        self.bytes = int(row[0])

    def per(self, orders: int) -> float | None:
        return round(self.bytes / orders) if orders else None


@contextlib.contextmanager
def bench_infra(
    name: str, *, broker: str | None = None, partitions: int = 6
) -> Iterator[BenchInfra]:
    """PostgreSQL and a broker found or started like `make run` does, plus a fresh database.

    PostgreSQL: STEADFAST_DATABASE_URL, else 127.0.0.1:5432, else embedded; the database
    `steadfast_bench_<name>` is dropped, re-created and migrated. Broker: an existing
    STEADFAST_KAFKA_BOOTSTRAP_SERVERS, else a fresh one of `broker` (STEADFAST_BROKER, else
    Apache Kafka when Java 17+ is on PATH, else noida-db) with an empty data dir, stopped on
    exit. The topic is unique per run.
    """
    import migrations

    kind = broker or infra.default_broker()
    TIMELINE.take()  # a bench that crashed before its report leaves no series behind
    state = STATE_DIR / name
    log_dir = state / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pg = infra.find_or_start_postgres(state, os.environ.get("STEADFAST_DATABASE_URL"))
        if pg.embedded:
            stack.callback(pg.stop)
        database_url = _fresh_database(pg.url, f"steadfast_bench_{name}")
        migrations.upgrade(database_url)

        bootstrap = os.environ.get("STEADFAST_KAFKA_BOOTSTRAP_SERVERS")
        broker_pids: list[int] = []
        if bootstrap:
            kind = "external"
        else:
            # A fresh data dir: no earlier run's records or groups (noida-db also rewrites
            # its whole data file, so old records would slow it down).
            for old in (state / "broker-noida", *state.glob("kafka-*")):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
            started = infra.start_broker(kind, state)
            stack.callback(started.stop)
            bootstrap = started.bootstrap
            pids = getattr(started, "pids", None)
            broker_pids = list(pids().values()) if callable(pids) else []
        topic = f"bench.{name}.{int(time.time())}"
        infra.ensure_topics(bootstrap, {topic: partitions})
        yield BenchInfra(
            database_url=database_url,
            bootstrap=bootstrap,
            broker_kind=kind,
            topic=topic,
            partitions=partitions,
            log_dir=log_dir,
            broker_pids=broker_pids,
        )


def _fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(infra.libpq_url(server_url), autocommit=True) as conn:
        ident = psycopg.sql.Identifier(name)
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(ident))
    url = make_url(infra.libpq_url(server_url)).set(database=name)
    return url.render_as_string(hide_password=False)


def start_process(
    name: str, script: str, bench: BenchInfra, env: Mapping[str, str] | None = None
) -> Proc:
    """Start console script `script` of this venv with `bench.env(env)`; logs in log_dir."""
    log_path = bench.log_dir / f"{name}.log"
    log_path.unlink(missing_ok=True)
    return start(name, script, bench.env(env), bench.log_dir)


@dataclass(frozen=True)
class Drain:
    """How far a drain got: `done - done_at_start` items in `seconds`."""

    done_at_start: int
    done: int
    seconds: float
    timed_out: bool

    @property
    def rate(self) -> float:
        return (self.done - self.done_at_start) / self.seconds if self.seconds > 0 else 0.0


def drain(
    progress: Callable[[], int],
    total: int,
    *,
    timeout: float,
    startup_timeout: float = 90.0,
    finished: Callable[[], bool] = lambda: True,
    interval: float = 0.05,
) -> Drain:
    """Time a process working through `total` items, from its first finished item.

    `progress()` counts finished items. The clock starts once it is above 0, so start-up
    (imports, connections, a group join) is not throughput, and stops once it reaches
    `total` and `finished()` holds (e.g. consumer lag 0). Bounded by `timeout`: a slow run
    returns what it did with `timed_out` set rather than hanging or raising.
    """
    run_bounded(lambda: progress() > 0, timeout=startup_timeout, what="first item")
    started, at_start = time.monotonic(), progress()
    deadline = started + timeout
    done = at_start
    # Items done over time, for the throughput chart: the counts this loop reads anyway.
    times: list[float | None] = [0.0]
    counts: list[float | None] = [float(at_start)]

    def note(at: float, count: int, *, last: bool = False) -> None:
        previous = times[-1] or 0.0
        if last or at - previous >= SERIES_STEP_SECONDS:
            times.append(round(at, 3))
            counts.append(float(count))

    try:
        while time.monotonic() < deadline:
            done = progress()
            note(time.monotonic() - started, done)
            if done >= total and finished():
                return Drain(at_start, done, time.monotonic() - started, timed_out=False)
            time.sleep(interval)
        done = progress()
        return Drain(at_start, done, time.monotonic() - started, timed_out=True)
    finally:
        note(time.monotonic() - started, done, last=True)
        TIMELINE.put("progress", {"t": times, "done": counts})


def run_bounded(
    step: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Call `step` until it returns True or `timeout` passes; returns the seconds taken.

    Raises TimeoutError, so a bench never hangs on a stuck process.
    """
    started = time.monotonic()
    while not step():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started
