"""One load run, start to finish: faults, placement and poison, settling, the summary.

The composition root of the load generator; the CLI and the end-to-end benchmark both
call `run_load`. Faults changed for the run are put back afterwards, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from local.load import ConfigError
from local.load.poison import DEFAULT_OVERSIZED_BYTES, PoisonProducer, key_prefix
from local.load.report import Summary, per_second, percentiles
from local.load.runner import Budget, PlacementRun, Placer
from local.load.settle import Settled, Settler
from local.load.target import Target
from local.load.warehouse import WarehouseAdmin, flaky_faults
from local.load.workload import EXPECTED_STATUS, Kind, Mix, Workload

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    target: Target
    mix: Mix
    budget: Budget
    rate: float | None = None
    concurrency: int | None = None
    max_in_flight: int = 256
    faults: dict[str, Any] | None = None
    keep_faults: bool = False
    settle_timeout: float = 120.0
    poll_interval: float = 0.5
    idempotency_keys: bool = True
    skus: int = 100
    out_of_stock_prefix: str = "OOS-"
    oversized_bytes: int = DEFAULT_OVERSIZED_BYTES
    request_timeout: float = 10.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ConfigError("give exactly one of --rate and --concurrency")
        if self.settle_timeout <= 0 or self.settle_timeout > 3600:
            raise ConfigError("--settle-timeout must be between 0 and 3600 seconds")

    def effective_faults(self) -> dict[str, Any] | None:
        """What to PUT on the mock: explicit faults, else a failure rate for the flaky share."""
        if self.faults is not None:
            return self.faults
        share = self.mix.share(Kind.FLAKY)
        return flaky_faults(share) if share > 0 else None


class _Bars:
    """A rich progress display, or nothing when quiet."""

    def __init__(self, console: Console | None) -> None:
        self.progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            if console is not None
            else None
        )

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A setter of the completed count (absolute, not an increment)."""
        if self.progress is None:
            return lambda _: None
        task_id = self.progress.add_task(description, total=total)
        progress = self.progress
        return lambda done: progress.update(task_id, completed=done)

    @contextlib.contextmanager
    def shown(self) -> Any:
        if self.progress is None:
            yield
        else:
            with self.progress:
                yield


@contextlib.asynccontextmanager
async def _faults_applied(
    admin: WarehouseAdmin | None, faults: dict[str, Any] | None, keep: bool
) -> AsyncIterator[None]:
    if faults is None:
        yield
        return
    if admin is None:
        raise ConfigError("setting warehouse faults needs the warehouse URL and admin token")
    previous = await admin.faults()
    await admin.set_faults(faults)
    try:
        yield
    finally:
        if not keep:
            await admin.set_faults(previous)


async def run_load(config: LoadConfig, console: Console | None = None) -> Summary:
    target = config.target
    workload = Workload(
        mix=config.mix,
        run_id=config.run_id,
        skus=config.skus,
        out_of_stock_prefix=config.out_of_stock_prefix,
    )
    connections = config.concurrency or config.max_in_flight
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(config.request_timeout)
    faults = config.effective_faults()
    bars = _Bars(console)
    async with (
        aiohttp.ClientSession(
            base_url=target.api,
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=config.request_timeout),
            trust_env=False,
        ) as orders_http,
        httpx.AsyncClient(
            base_url=target.api, limits=limits, timeout=timeout, trust_env=False
        ) as api,
        httpx.AsyncClient(timeout=timeout, trust_env=False) as admin_http,
    ):
        admin = (
            WarehouseAdmin(admin_http, target.warehouse, target.admin_token)
            if target.warehouse and target.admin_token
            else None
        )
        before = await admin.stats() if admin else None
        poison = _poison_producer(config, target)
        async with _faults_applied(admin, faults, config.keep_faults):
            with bars.shown():
                placer = Placer(
                    client=orders_http,
                    workload=workload,
                    budget=config.budget,
                    poison=poison,
                    idempotency_keys=config.idempotency_keys,
                    on_progress=bars.task("placing", config.budget.count),
                )
                if config.rate is not None:
                    run = await placer.at_rate(config.rate, config.max_in_flight)
                else:
                    assert config.concurrency is not None
                    run = await placer.with_clients(config.concurrency)
                if poison is not None:
                    await asyncio.to_thread(poison.close)
                placed = run.placed
                settler = Settler(api, admin_token=target.admin_token)
                since = min((p.created_at for p in placed if p.created_at), default=None)
                settled = Settled()
                if since is not None or run.poison_sent:
                    final_bar = bars.task("final", len(placed))
                    settled = await settler.settle(
                        {p.order_id for p in placed if p.order_id},
                        since=since or run.started_at,
                        within=config.settle_timeout,
                        poll_interval=config.poll_interval,
                        poison_expected=run.poison_sent,
                        poison_prefix=key_prefix(config.run_id),
                        poison_since=run.started_at,
                        on_progress=final_bar,
                    )
        after = await admin.stats() if admin else None
    return summarize(config, faults, run, settled, before, after)


def _poison_producer(config: LoadConfig, target: Target) -> PoisonProducer | None:
    if config.mix.share(Kind.POISON) == 0:
        return None
    if not target.kafka_bootstrap:
        raise ConfigError("the mix has poison but no broker is known (--kafka)")
    if not target.admin_token:
        raise ConfigError("verifying poison needs the admin token (--admin-token)")
    return PoisonProducer(
        target.kafka_bootstrap,
        target.topic,
        config.run_id,
        oversized_bytes=config.oversized_bytes,
        client_config=target.kafka_config,
    )


def summarize(
    config: LoadConfig,
    faults: dict[str, Any] | None,
    run: PlacementRun,
    settled: Settled,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> Summary:
    placed = run.placed
    statuses = Counter(f.status for f in settled.finals.values())
    by_kind: dict[str, Counter[str]] = {}
    unexpected: dict[str, Counter[str]] = {}
    for p in run.placements:
        counts = by_kind.setdefault(p.kind.value, Counter())
        counts["attempted"] += 1
        if p.order_id is None:
            counts["placement_error"] += 1
            continue
        final = settled.finals.get(p.order_id)
        status = final.status if final else "NOT_FINAL"
        counts[status] += 1
        if status != EXPECTED_STATUS.get(p.kind):
            unexpected.setdefault(p.kind.value, Counter())[status] += 1
    finals = list(settled.finals.values())
    window = 0.0
    if finals:
        window = (
            max(f.finalized_at for f in finals) - min(f.created_at for f in finals)
        ).total_seconds()
    poison_states = Counter(state for state, _ in settled.poison_rows.values())
    summary = Summary(
        run_id=config.run_id,
        mode="rate" if config.rate is not None else "concurrency",
        mix=config.mix.describe(),
        target_rate=config.rate,
        concurrency=config.concurrency,
        faults=faults,
        attempted=len(run.placements),
        placed=len(placed),
        placement_errors=dict(Counter(p.error or "?" for p in run.failed)),
        reserved=statuses["RESERVED"],
        rejected=statuses["REJECTED"],
        dead=statuses["DEAD"],
        cancelled=statuses["CANCELLED"],
        still_pending=len(settled.still_pending),
        missing=len(settled.missing),
        lost=settled.lost,
        by_kind={k: dict(v) for k, v in by_kind.items()},
        unexpected={k: dict(v) for k, v in unexpected.items()},
        poison_injected=run.poison_sent,
        poison_dead_lettered=settled.poison_dead,
        poison_other={s: n for s, n in poison_states.items() if s != "DEAD"},
        placement_seconds=round(run.elapsed, 3),
        final_window_seconds=round(window, 3),
        settle_seconds=round(settled.seconds, 3),
        placed_per_second=round(per_second(len(placed), run.elapsed), 1),
        final_per_second=round(per_second(len(finals), window), 1),
        schedule_lag_max_seconds=round(run.max_lag, 3),
        latency_ms=_ms(percentiles([f.seconds for f in finals])),
        reserved_latency_ms=_ms(percentiles([f.seconds for f in finals if f.status == "RESERVED"])),
        api_latency_ms=_ms(percentiles([p.seconds for p in placed])),
    )
    if before is not None and after is not None:
        summary.duplicates = after["duplicate_reservations"] - before["duplicate_reservations"]
        summary.warehouse_reservations = after["reservations"] - before["reservations"]
    return summary


def _ms(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 1) for k, v in values.items()}
