"""bench idle: the whole stack up, no orders, 30 s: how much of a core each process uses.

An idle service should cost nothing. The stack is `make run`'s (the launcher, on its own
Apache Kafka and embedded PostgreSQL, so their CPU is measured too), left alone for a
settling period after it is ready, then measured over `--seconds` with psutil (user +
system CPU of each process and its children). Target: every steadfast process under 3% of
one core; Kafka and PostgreSQL are reported beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.common import (
    STATE_DIR,
    BenchResult,
    RssSampler,
    Target,
    report,
    run_bounded,
)

NAME = "idle"
TARGET_PERCENT = 3.0
LAUNCHER = Path(sys.executable).parent / "steadfast-local"


def _cpu(pid: int, with_children: bool = True) -> float:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)] if with_children else [root]
        return sum(sum(p.cpu_times()[:2]) for p in tree)
    return 0.0


def _postgres_cpu(data_dir: Path) -> float:
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(data_dir) in " ".join(proc.info["cmdline"] or []):
                root = psutil.Process(proc.pid)
                total += sum(sum(p.cpu_times()[:2]) for p in [root, *root.children()])
    return total


def run(seconds: float, settle: float) -> BenchResult:
    state = STATE_DIR / NAME
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEADFAST_")}
    env["STEADFAST_LOG_LEVEL"] = "INFO"
    log_path = state / "stack.log"
    with log_path.open("wb") as out:
        launcher = subprocess.Popen(
            [str(LAUNCHER), "run", "--state-dir", str(state)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoints_path = state / "run" / "endpoints.json"
    endpoints: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal endpoints
        if launcher.poll() is not None:
            raise RuntimeError(f"launcher exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            endpoints = json.loads(endpoints_path.read_text())
        return bool(endpoints.get("ready"))

    try:
        run_bounded(ready, timeout=120, what="stack ready", interval=0.2)
        pids = {name: int(pid) for name, pid in endpoints["pids"].items()}
        infra_pids = {
            name: int(pid) for name, pid in endpoints["infra_pids"].items() if name != "reaper"
        }
        time.sleep(settle)  # start-up work (pools, the group's first join) is not idle
        with RssSampler(pids) as rss:
            before = {name: _cpu(pid) for name, pid in {**pids, **infra_pids}.items()}
            before["launcher"] = _cpu(launcher.pid, with_children=False)
            before["postgres"] = _postgres_cpu(state / "pgdata")
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            after = {name: _cpu(pid) for name, pid in {**pids, **infra_pids}.items()}
            after["launcher"] = _cpu(launcher.pid, with_children=False)
            after["postgres"] = _postgres_cpu(state / "pgdata")
            peak = rss.peak_mb()
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(20)
    percent = {name: round(100 * (after[name] - before[name]) / elapsed, 2) for name in after}
    ours = {name: value for name, value in percent.items() if _is_ours(name)}
    worst = max(ours.values())
    return BenchResult(
        name=NAME,
        metric="% of a core (busiest process, idle)",
        value=worst,
        target=Target.at_most(TARGET_PERCENT),
        rss_mb=peak,
        broker=str(endpoints.get("broker")),
        checks={f"every_process_under_{TARGET_PERCENT:.0f}pct": worst < TARGET_PERCENT},
        details={
            "seconds": round(elapsed, 1),
            "settle_seconds": settle,
            "percent_of_a_core": percent,
            "log_level": "INFO",
        },
    )


def _is_ours(name: str) -> bool:
    return name.split("-")[0] in {"api", "warehouse", "relay", "consumer", "scheduler"}


def table(result: BenchResult) -> Table:
    out = Table(title=f"bench idle: % of one core over {result.details['seconds']} s")
    out.add_column("process")
    out.add_column("% of a core", justify="right")
    out.add_column(f"< {TARGET_PERCENT:.0f}%")
    for name, value in sorted(result.details["percent_of_a_core"].items()):
        steadfast = _is_ours(name)
        out.add_row(
            name,
            f"{value:.2f}",
            ("yes" if value < TARGET_PERCENT else "NO") if steadfast else "(infra)",
        )
    return out


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--settle", type=float, default=10.0, help="wait after ready")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.settle)
    Console().print(table(result))
    report(result)
    return result


if __name__ == "__main__":
    main()
