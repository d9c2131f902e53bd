"""`steadfast-load`: place orders against a running stack and check every one of them.

Exit status: 0 when every placed order reached a final state, the warehouse saw no
duplicate reservation and every poison event was dead-lettered; 1 otherwise; 2 for
bad usage (click's convention).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from local.load import ConfigError, LoadError
from local.load.poison import DEFAULT_OVERSIZED_BYTES
from local.load.report import print_summary
from local.load.run import LoadConfig, run_load
from local.load.runner import Budget
from local.load.target import DEFAULT_ENDPOINTS, read_endpoints, resolve
from local.load.warehouse import PRESETS, parse_faults
from local.load.workload import Mix


class RateType(click.ParamType):
    """`300`, `300/s` or `300/sec`: orders per second."""

    name = "N/s"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        text = str(value).strip().lower()
        for suffix in ("/sec", "/s"):
            text = text.removesuffix(suffix)
        try:
            rate = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a rate such as 300/s", param, ctx)
        if rate <= 0:
            self.fail("the rate must be positive", param, ctx)
        return rate


def _default_topic() -> str:
    from services.reservation.settings import ORDER_EVENTS_TOPIC

    # The launcher honours STEADFAST_KAFKA__TOPIC too; endpoints.json does not record it.
    return os.environ.get("STEADFAST_KAFKA__TOPIC") or ORDER_EVENTS_TOPIC


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rate", type=RateType(), help="Open loop: place N orders per second.")
@click.option("--concurrency", type=click.IntRange(1, 4096), help="Closed loop: N clients.")
@click.option("--count", type=click.IntRange(1), help="Stop after N units (orders + poison).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S s.")
@click.option(
    "--mix",
    default="healthy=100",
    show_default=True,
    help="KIND=WEIGHT,… of healthy, out_of_stock (oos), flaky, poison.",
)
@click.option("--faults", "faults_json", metavar="JSON", help="Warehouse faults for the run.")
@click.option("--faults-preset", type=click.Choice(sorted(PRESETS)), help="Named warehouse faults.")
@click.option("--keep-faults", is_flag=True, help="Leave the run's faults set afterwards.")
@click.option(
    "--endpoints",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_ENDPOINTS,
    show_default=True,
    help="Written by `make run`; flags below override it.",
)
@click.option("--api", metavar="URL", help="Reservation API base URL.")
@click.option("--warehouse", metavar="URL", help="Warehouse mock base URL.")
@click.option("--admin-token", envvar="STEADFAST_ADMIN_TOKEN", help="Admin bearer token.")
@click.option("--kafka", metavar="HOST:PORT", help="Bootstrap servers, for poison events.")
@click.option("--topic", default=_default_topic, show_default="reservations.order-events")
@click.option("--allow-non-loopback", is_flag=True, help="Allow load on non-loopback hosts.")
@click.option(
    "--settle-timeout",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=120.0,
    show_default=True,
    help="Seconds to wait for every order to be final.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 4096),
    default=256,
    show_default=True,
    help="Rate mode: requests outstanding at once.",
)
@click.option("--skus", type=click.IntRange(1), default=100, show_default=True)
@click.option("--oos-prefix", default="OOS-", show_default=True, help="Mock's out-of-stock prefix.")
@click.option(
    "--poison-oversized-bytes",
    type=click.IntRange(1024, 900_000),
    default=DEFAULT_OVERSIZED_BYTES,
    show_default=True,
)
@click.option(
    "--idempotency-keys/--no-idempotency-keys",
    default=True,
    show_default=True,
    help="Send an Idempotency-Key with every order.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".steadfast/load/last.json"),
    show_default=True,
    help="Where to write the JSON result.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(
    rate: float | None,
    concurrency: int | None,
    count: int | None,
    duration: float | None,
    mix: str,
    faults_json: str | None,
    faults_preset: str | None,
    keep_faults: bool,
    endpoints: Path,
    api: str | None,
    warehouse: str | None,
    admin_token: str | None,
    kafka: str | None,
    topic: str,
    allow_non_loopback: bool,
    settle_timeout: float,
    max_in_flight: int,
    skus: int,
    oos_prefix: str,
    poison_oversized_bytes: int,
    idempotency_keys: bool,
    output: Path,
    quiet: bool,
) -> None:
    """Place orders at --rate or with --concurrency clients, for --count and/or --duration,
    then wait until every order is final and report what became of them.

    \b
    steadfast-load --rate 300/s --duration 20
    steadfast-load --concurrency 32 --count 5000 \\
        --mix healthy=80,out_of_stock=10,flaky=5,poison=5
    """
    if rate is None and concurrency is None:
        concurrency = 16
    if rate is not None and concurrency is not None:
        raise click.UsageError("give --rate or --concurrency, not both")
    if count is None and duration is None:
        count = 1000
    try:
        target = resolve(
            read_endpoints(endpoints),
            api=api,
            warehouse=warehouse,
            admin_token=admin_token,
            kafka_bootstrap=kafka,
            topic=topic,
        )
        if not allow_non_loopback:
            target.check_loopback()
        config = LoadConfig(
            target=target,
            mix=Mix.parse(mix),
            budget=Budget.of(count, duration, rate),
            rate=rate,
            concurrency=concurrency,
            max_in_flight=max_in_flight,
            faults=parse_faults(faults_json, faults_preset),
            keep_faults=keep_faults,
            settle_timeout=settle_timeout,
            idempotency_keys=idempotency_keys,
            skus=skus,
            out_of_stock_prefix=oos_prefix,
            oversized_bytes=poison_oversized_bytes,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    err = Console(stderr=True)
    try:
        summary = asyncio.run(run_load(config, console=None if quiet else err))
    except LoadError as exc:
        err.print(f"[red]error[/red]: {exc}")
        sys.exit(1)
    print_summary(summary, Console())
    summary.write(output)
    err.print(f"result written to {output}")
    sys.exit(0 if summary.ok else 1)
