"""Recovery: N parked messages re-driven by two real schedulers at one cluster-wide rate.

The retry rows are what the consumer parks after a retryable warehouse failure (an
OrderPlaced event with the relay's headers, one failed attempt, due now), inserted
directly, and their orders wait in RETRY_PENDING. The scheduler then re-drives them
through the healthy warehouse mock. Both schedulers are configured with the same
STEADFAST_REDRIVE_RATE_PER_SECOND and draw from one token bucket in PostgreSQL, so the
rate must hold for the two together. Passing means: the achieved rate is within ±10% of
the configured one, every row and order ends SUCCEEDED/RESERVED, and the breaker made no
transition at all (both schedulers' transition counters are 0 and the shared breaker row
is CLOSED at the end).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg

from bench.common import (
    BenchResult,
    RssSampler,
    Target,
    bench_infra,
    drain,
    report,
    start_process,
)
from bench.orders import BenchOrder, make_orders
from local.infra import BROKERS, free_port
from tests.processes import metric_sum, start_warehouse

NAME = "recovery"
TOLERANCE = 0.10
HANDLER = "reserve-stock"  # services.reservation.handler.HANDLER_NAME


def park(conn: psycopg.Connection[Any], orders: list[BenchOrder], topic: str) -> None:
    """COPY RETRY_PENDING orders and their parked messages (one failed attempt, due now)."""
    with (
        conn.cursor() as cur,
        cur.copy("COPY orders (id, customer_id, items, status, attempts) FROM STDIN") as copy,
    ):
        for o in orders:
            copy.write_row((o.order_id, o.customer_id, json.dumps(o.items), "RETRY_PENDING", 1))
    columns = (
        "source_topic, source_partition, source_offset, consumer_group, message_id, key,"
        " payload, headers, handler, error_class, last_error, attempts, max_attempts"
    )
    with conn.cursor() as cur, cur.copy(f"COPY retry_messages ({columns}) FROM STDIN") as copy:
        for offset, o in enumerate(orders):
            headers = dict(o.kafka_headers())
            copy.write_row(
                (
                    topic,
                    0,
                    offset,
                    "steadfast-reservations",
                    str(o.event_id),
                    str(o.order_id),
                    o.payload.encode(),
                    json.dumps(headers),
                    HANDLER,
                    "http_503",
                    "warehouse answered 503",
                    1,
                    8,
                )
            )
    conn.commit()


def breaker_transitions(metrics_url: str) -> float:
    """Sum of steadfast_breaker_transitions_total on the scheduler's /metrics."""
    return metric_sum(metrics_url, "steadfast_breaker_transitions_total")


SCHEDULERS = 2


def run(
    messages: int = 20_000,
    rate: float = 1_000.0,
    timeout: float | None = None,
    broker: str | None = None,
) -> BenchResult:
    # Bounded by the time the configured rate needs, with room for the tolerance.
    timeout = timeout or messages / rate * 1.5 + 10
    with bench_infra(NAME, broker=broker) as infra:
        orders = list(make_orders(messages, seed=3))
        with infra.connect() as conn:
            park(conn, orders, infra.topic)
        del orders

        warehouse = start_warehouse(infra.log_dir)
        ports = [free_port() for _ in range(SCHEDULERS)]
        schedulers = [
            start_process(
                f"{NAME}-{n}",
                "steadfast-scheduler",
                infra,
                {
                    "STEADFAST_WAREHOUSE__BASE_URL": warehouse.urls["base"],
                    "STEADFAST_METRICS_PORT": str(port),
                    "STEADFAST_INSTANCE_ID": f"scheduler-{n}",
                    "STEADFAST_REDRIVE_RATE_PER_SECOND": str(rate),
                    # A tenth of a second of tokens per batch: the shared bucket, not the
                    # pass schedule, sets the pace, and each batch is one engine call.
                    "STEADFAST_BATCH_SIZE": str(max(1, int(rate / 10))),
                    "STEADFAST_REDRIVE_BURST": str(max(1, int(rate / 10))),
                    "STEADFAST_INTERVAL_SECONDS": "0.1",
                },
            )
            for n, port in enumerate(ports, start=1)
        ]
        pids = {
            **{p.name: p.process.pid for p in schedulers},
            "warehouse-mock": warehouse.process.pid,
        }
        try:
            with infra.connect(autocommit=True) as conn, RssSampler(pids) as rss:

                def succeeded() -> int:
                    for proc in (*schedulers, warehouse):
                        if not proc.alive():
                            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                    row = conn.execute(
                        "SELECT count(*) FROM retry_messages WHERE state = 'SUCCEEDED'"
                    ).fetchone()
                    return int(row[0]) if row else 0

                result = drain(succeeded, messages, timeout=timeout)
                transitions = sum(
                    breaker_transitions(f"http://127.0.0.1:{port}/metrics") for port in ports
                )
                shares = _shares(conn)
                breakers = _breaker_states(conn)
                states = dict(
                    conn.execute(
                        "SELECT state, count(*) FROM retry_messages GROUP BY state"
                    ).fetchall()
                )
                reserved_row = conn.execute(
                    "SELECT count(*) FROM orders WHERE status = 'RESERVED'"
                ).fetchone()
                reserved = int(reserved_row[0]) if reserved_row else 0
            peak, cpu = rss.peak_mb(), rss.cpu_seconds()
        finally:
            for proc in schedulers:
                proc.stop()
            warehouse.stop()
        done = max(result.done, 1)
        return BenchResult(
            name=NAME,
            metric="re-drives/s",
            value=result.rate,
            target=Target.within(rate, TOLERANCE),
            rss_mb=peak,
            broker=infra.broker_kind,
            checks={
                "drained_in_time": not result.timed_out,
                "breaker_did_not_flap": transitions == 0
                and all(state == "CLOSED" for state in breakers.values()),
                "all_orders_reserved": reserved == messages,
            },
            details={
                "messages": messages,
                "schedulers": SCHEDULERS,
                "configured_rate_per_second": rate,
                "rows_finished_by_scheduler": shares,
                "redriven_while_timed": result.done - result.done_at_start,
                "drain_seconds": round(result.seconds, 3),
                "retry_states": states,
                "breaker_transitions": transitions,
                "breakers_at_end": breakers,
                "cpu_seconds": cpu,
                "cpu_us_per_event": {k: round(v * 1e6 / done) for k, v in cpu.items()},
            },
        )


def _shares(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Who finished how many rows (the `by` of each row's last history entry)."""
    rows = conn.execute(
        "SELECT split_part(history -> -1 ->> 'by', ':', 1), count(*) FROM retry_messages "
        "WHERE state = 'SUCCEEDED' GROUP BY 1"
    ).fetchall()
    return {str(owner): int(n) for owner, n in rows}


def _breaker_states(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {
        str(name): str(state)
        for name, state in conn.execute("SELECT name, state FROM circuit_breakers").fetchall()
    }


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1_000.0, help="re-drives per second")
    parser.add_argument("--timeout", type=float, default=None, help="default: 1.5x the ideal")
    parser.add_argument("--broker", choices=BROKERS, default=None)
    args = parser.parse_args(argv)
    result = run(messages=args.messages, rate=args.rate, timeout=args.timeout, broker=args.broker)
    report(result)
    return result


if __name__ == "__main__":
    main()
