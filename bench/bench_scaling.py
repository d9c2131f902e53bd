"""Scaling out the consumer: 1, 2 and 3 consumer processes on 6 and 12 partitions.

For each topology a fresh stack (`steadfast-local run --scale consumer=N`, a topic of
its own with P partitions, a group of its own) takes a warm-up, then closed-loop clients
place healthy orders for `--seconds`. Per topology: final orders per second, CPU per
order per process (summed over a role's instances; PostgreSQL's and the broker's beside
them), and each consumer instance's share of the events (its
`steadfast_consumer_batch_messages_sum`, read from its own metrics port before and after).

On 2 cores the total is CPU-bound, so orders/s cannot grow with instances here. What must
stay flat is CPU per order (adding an instance adds no per-order work) and each
instance's share (the group spreads partitions evenly). The headline is the worst ratio
of pipeline CPU per order to the one-consumer figure on the same partitions.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.bench_e2e import OURS, CpuMeter, load, load_target, private_postgres, running_stack
from bench.common import BenchResult, RssSampler, Target, bench_infra, report
from tests.processes import metric_sum

NAME = "scaling"
PARTITIONS = (6, 12)
CONSUMERS = (1, 2, 3)
TARGET_CPU_RATIO = 1.25
SHARE_TOLERANCE = 0.25
"""Each instance handles 1/N of the events, ± this fraction of 1/N."""
EVENTS = "steadfast_consumer_batch_messages"


def _events_by_instance(metrics: dict[str, str]) -> dict[str, float]:
    return {
        name: metric_sum(url, f"{EVENTS}_sum")
        for name, url in metrics.items()
        if name.startswith("consumer")
    }


def _by_role(cpu_seconds: dict[str, float], orders: int) -> dict[str, float]:
    roles: dict[str, float] = {}
    for name, seconds in cpu_seconds.items():
        role = name.split("-")[0] if name.split("-")[0] in OURS else name
        roles[role] = roles.get(role, 0.0) + seconds
    return {role: round(1000 * s / orders, 3) for role, s in roles.items()} if orders else {}


def measure(
    partitions: int,
    consumers: int,
    *,
    clients: int,
    seconds: float,
    warmup: int,
    linger: float | None,
) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    with bench_infra(NAME, partitions=partitions) as infra:
        env = {"STEADFAST_KAFKA__CONSUMER_GROUP": f"bench-scaling-{suffix}"}
        if linger is not None:
            env["STEADFAST_BATCH_LINGER_SECONDS"] = str(linger)
        with running_stack(
            infra, "INFO", name=NAME, env=env, args=(f"--scale=consumer={consumers}",)
        ) as stack:
            pids = {name: int(pid) for name, pid in stack.endpoints["pids"].items()}
            target = load_target(stack, infra.topic)
            with RssSampler(pids) as rss:
                load(target, None, concurrency=16, count=warmup)
                before = _events_by_instance(stack.endpoints["metrics"])
                cpu = CpuMeter.on(pids, infra)
                cpu.start()
                run = load(target, None, concurrency=clients, seconds=seconds)
                cpu.stop()
                after = _events_by_instance(stack.endpoints["metrics"])
                peak = rss.peak_mb()
    events = {name: after[name] - before.get(name, 0.0) for name in after}
    total = sum(events.values())
    shares = {name: round(n / total, 3) if total else 0.0 for name, n in sorted(events.items())}
    by_role = _by_role(cpu.seconds, run.placed)
    pipeline = round(sum(v for k, v in by_role.items() if k in OURS), 3)
    return {
        "partitions": partitions,
        "consumers": consumers,
        "broker": infra.broker_kind,
        "final_per_second": run.final_per_second,
        "placed": run.placed,
        "lost": run.lost,
        "duplicates": run.duplicates,
        "cpu_ms_per_order": by_role,
        "pipeline_cpu_ms_per_order": pipeline,
        "consumer_cpu_ms_per_order": by_role.get("consumer", 0.0),
        "consumer_shares": shares,
        "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
    }


def run(
    *, clients: int, seconds: float, warmup: int, linger: float | None = None
) -> tuple[BenchResult, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    peak: dict[str, float] = {}
    with private_postgres(True, NAME):
        for partitions in PARTITIONS:
            for consumers in CONSUMERS:
                row = measure(
                    partitions,
                    consumers,
                    clients=clients,
                    seconds=seconds,
                    warmup=warmup,
                    linger=linger,
                )
                rows.append(row)
                for name, mb in row["peak_rss_mb"].items():
                    peak[name] = max(peak.get(name, 0.0), mb)
    ratios = []
    balanced = True
    for row in rows:
        base = next(r for r in rows if r["partitions"] == row["partitions"] and r["consumers"] == 1)
        row["cpu_ratio_to_one_consumer"] = round(
            row["pipeline_cpu_ms_per_order"] / base["pipeline_cpu_ms_per_order"], 3
        )
        ratios.append(row["cpu_ratio_to_one_consumer"])
        fair = 1 / row["consumers"]
        balanced &= (
            all(
                abs(share - fair) <= SHARE_TOLERANCE * fair
                for share in row["consumer_shares"].values()
            )
            and len(row["consumer_shares"]) == row["consumers"]
        )
    worst = max(ratios)
    result = BenchResult(
        name=NAME,
        metric="CPU/order vs 1 consumer",
        value=worst,
        target=Target.at_most(TARGET_CPU_RATIO),
        rss_mb=peak,
        broker=rows[0]["broker"],
        checks={
            f"each_consumer_within_{SHARE_TOLERANCE:.0%}_of_its_fair_share": balanced,
            "nothing_lost": all(r["lost"] == 0 for r in rows),
            "no_duplicates": all(not r["duplicates"] for r in rows),
        },
        details={
            "clients": clients,
            "seconds": seconds,
            "batch_linger_seconds": linger,
            "topologies": rows,
        },
    )
    return result, rows


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="bench scaling: consumer instances by partitions (2 cores, closed loop)")
    for column in (
        "partitions", "consumers", "orders/s", "pipeline CPU ms/order", "consumer ms/order",
        "vs 1 consumer", "shares", "busiest process",
    ):  # fmt: skip
        out.add_column(column, justify="left" if column == "shares" else "right")
    for r in rows:
        ours = {k: v for k, v in r["cpu_ms_per_order"].items() if k in OURS}
        busiest = max(ours, key=lambda k: ours[k]) if ours else "-"
        out.add_row(
            str(r["partitions"]),
            str(r["consumers"]),
            f"{r['final_per_second']:,.0f}",
            f"{r['pipeline_cpu_ms_per_order']:.2f}",
            f"{r['consumer_cpu_ms_per_order']:.2f}",
            f"{r['cpu_ratio_to_one_consumer']:.2f}",
            " ".join(f"{share:.0%}" for share in r["consumer_shares"].values()),
            f"{busiest} {ours.get(busiest, 0):.2f}",
        )
    return out


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured run per topology")
    parser.add_argument("--warmup", type=int, default=400, help="orders before measuring")
    parser.add_argument(
        "--linger", type=float, default=None, help="the consumers' batch linger (s), else theirs"
    )
    args = parser.parse_args(argv)
    if not 5 <= args.seconds <= 300 or args.clients < 1:
        parser.error("--seconds between 5 and 300, --clients >= 1")
    result, rows = run(
        clients=args.clients, seconds=args.seconds, warmup=args.warmup, linger=args.linger
    )
    Console().print(table(rows))
    report(result)
    return result


if __name__ == "__main__":
    main()
