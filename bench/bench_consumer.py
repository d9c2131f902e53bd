"""Consumer throughput: drain a pre-filled topic of N OrderPlaced events through the warehouse.

The records are what the relay publishes (payload, key and headers including
`event_id`), produced straight to the topic with confluent-kafka, and their orders exist
as PENDING rows, as the API would have left them. The real consumer then reserves stock
at the real warehouse mock (no faults) and finalizes each order. The rate counts from the
first final order to the moment every order is final and the group's lag is 0, so the
process's start-up and first group join are not in it.
"""

from __future__ import annotations

import argparse
import time

from bench.common import (
    BenchResult,
    RssSampler,
    Target,
    bench_infra,
    drain,
    report,
    start_process,
)
from bench.orders import copy_orders, make_orders
from bench.topic import group_lag, produce_orders
from local.infra import BROKERS
from tests.processes import start_warehouse

NAME = "consumer"
TARGET_EVENTS_PER_SECOND = 3_000
GROUP = "bench-reservations"
FINAL_COUNT = (
    "SELECT count(*) FROM orders WHERE status IN ('RESERVED', 'REJECTED', 'DEAD', 'CANCELLED')"
)


def run(events: int = 50_000, timeout: float = 120.0, broker: str | None = None) -> BenchResult:
    with bench_infra(NAME, broker=broker) as infra:
        orders = list(make_orders(events))
        fill_started = time.monotonic()
        with infra.connect() as conn:
            copy_orders(conn, orders)
        produced = produce_orders(infra.bootstrap, infra.topic, orders, timeout=120)
        fill_seconds = time.monotonic() - fill_started
        del orders

        warehouse = start_warehouse(infra.log_dir)
        consumer = start_process(
            NAME,
            "steadfast-consumer",
            infra,
            {
                "STEADFAST_WAREHOUSE__BASE_URL": warehouse.urls["base"],
                "STEADFAST_KAFKA__CONSUMER_GROUP": GROUP,
                "STEADFAST_DATA_DIR": str(infra.log_dir / "faust"),
            },
        )
        pids = {NAME: consumer.process.pid, "warehouse-mock": warehouse.process.pid}
        try:
            with infra.connect(autocommit=True) as conn, RssSampler(pids) as rss:

                def final() -> int:
                    for proc in (consumer, warehouse):
                        if not proc.alive():
                            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                    row = conn.execute(FINAL_COUNT).fetchone()
                    return int(row[0]) if row else 0

                def no_lag() -> bool:
                    return group_lag(infra.bootstrap, infra.topic, infra.partitions, GROUP) == 0

                result = drain(final, events, timeout=timeout, finished=no_lag)
                statuses = dict(
                    conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall()
                )
            peak, cpu = rss.peak_mb(), rss.cpu_seconds()
        finally:
            consumer.stop()
            warehouse.stop()
        handled = max(result.done, 1)
        return BenchResult(
            name=NAME,
            metric="events/s",
            value=result.rate,
            target=Target.at_least(TARGET_EVENTS_PER_SECOND),
            rss_mb=peak,
            broker=infra.broker_kind,
            checks={
                "drained_in_time": not result.timed_out,
                "all_orders_reserved": statuses.get("RESERVED", 0) == events,
            },
            details={
                "events": events,
                "produced": produced,
                "finalized_while_timed": result.done - result.done_at_start,
                "drain_seconds": round(result.seconds, 3),
                "fill_seconds": round(fill_seconds, 3),
                "statuses": statuses,
                "partitions": infra.partitions,
                "cpu_seconds": cpu,
                # Per event over the whole run: comparable across runs however loaded
                # the machine was, unlike the wall-clock rate.
                "cpu_us_per_event": {k: round(v * 1e6 / handled) for k, v in cpu.items()},
            },
        )


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="drain time limit, s")
    parser.add_argument("--broker", choices=BROKERS, default=None)
    args = parser.parse_args(argv)
    result = run(events=args.events, timeout=args.timeout, broker=args.broker)
    report(result)
    return result


if __name__ == "__main__":
    main()
