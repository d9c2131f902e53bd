"""Outbox relay throughput: drain a pre-filled outbox of N rows into Kafka.

The rows are OrderPlaced events as the API writes them, COPYed in before the relay
starts. The rate counts from the relay's first marked batch to an empty outbox (so the
process's start-up is not in it), and the topic's end offsets must add up to N.
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
from bench.orders import copy_outbox, make_orders
from bench.topic import end_offsets
from local.infra import BROKERS

NAME = "relay"
TARGET_EVENTS_PER_SECOND = 20_000


def run(
    rows: int = 200_000,
    timeout: float = 120.0,
    broker: str | None = None,
    batch_size: int | None = None,
) -> BenchResult:
    with bench_infra(NAME, broker=broker) as infra:
        orders = list(make_orders(rows))
        fill_started = time.monotonic()
        with infra.connect() as conn:
            copy_outbox(conn, orders, infra.topic)
        fill_seconds = time.monotonic() - fill_started
        del orders

        env = {"STEADFAST_BATCH_SIZE": str(batch_size)} if batch_size else {}
        relay = start_process(NAME, "steadfast-relay", infra, env)
        try:
            with (
                infra.connect(autocommit=True) as conn,
                RssSampler({NAME: relay.process.pid}) as rss,
            ):

                def published() -> int:
                    if not relay.alive():
                        raise RuntimeError(f"relay exited:\n{relay.tail()}")
                    sql = "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
                    row = conn.execute(sql).fetchone()
                    return int(row[0]) if row else 0

                result = drain(published, rows, timeout=timeout, interval=0.02)
            peak, cpu = rss.peak_mb(), rss.cpu_seconds()
        finally:
            relay.stop()
        on_topic = sum(end_offsets(infra.bootstrap, infra.topic, infra.partitions).values())
        checks = {
            "drained_in_time": not result.timed_out,
            "topic_has_every_event": on_topic >= result.done,
        }
        return BenchResult(
            name=NAME,
            metric="events/s",
            value=result.rate,
            target=Target.at_least(TARGET_EVENTS_PER_SECOND),
            rss_mb=peak,
            broker=infra.broker_kind,
            checks=checks,
            details={
                "rows": rows,
                "drained_while_timed": result.done - result.done_at_start,
                "drain_seconds": round(result.seconds, 3),
                "fill_seconds": round(fill_seconds, 3),
                "records_on_topic": on_topic,
                "partitions": infra.partitions,
                "batch_size": batch_size or "default",
                "cpu_seconds": cpu,
                # Per event over the whole run: comparable across runs however loaded
                # the machine was, unlike the wall-clock rate.
                "cpu_us_per_event": {
                    k: round(v * 1e6 / max(result.done, 1)) for k, v in cpu.items()
                },
            },
        )


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="drain time limit, s")
    parser.add_argument("--broker", choices=BROKERS, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="STEADFAST_BATCH_SIZE")
    args = parser.parse_args(argv)
    result = run(
        rows=args.rows, timeout=args.timeout, broker=args.broker, batch_size=args.batch_size
    )
    report(result)
    return result


if __name__ == "__main__":
    main()
