"""Placement: POST /orders at a target rate (open loop) or from N clients (closed loop).

The POSTs go through aiohttp, not httpx: httpcore's pool looks at every connection for
every request (quadratic in the connections), and at 64 clients that was 66% of the
generator's CPU, so the generator, not the stack, set the e2e figure.

Every run is bounded twice, by a unit count and by seconds, whichever comes first, and a
rate-mode run also caps the requests in flight, so a stalled API cannot make the
generator pile up unbounded work. Poison units go to the poison sink instead of HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import orjson

from local.load import ConfigError
from local.load.workload import Kind, Workload

MAX_COUNT = 1_000_000
MAX_SECONDS = 3_600.0
# Without a yield now and then, a dispatcher that is behind schedule would start
# hundreds of requests before any of them gets to run.
YIELD_EVERY = 32
PLACE_ATTEMPTS = 3

Clock = Callable[[], float]


@dataclass(frozen=True)
class Budget:
    """At most `count` units, and no new unit after `seconds`."""

    count: int
    seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(f"count must be between 1 and {MAX_COUNT}")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise ConfigError(f"duration must be between 0 and {MAX_SECONDS:.0f} seconds")

    @classmethod
    def of(cls, count: int | None, seconds: float | None, rate: float | None) -> Budget:
        """Fill in the bound not given: from the rate when there is one, else the ceiling."""
        if count is None and seconds is None:
            raise ConfigError("give --count, --duration or both")
        if count is None:
            assert seconds is not None
            count = min(MAX_COUNT, math.ceil(rate * seconds)) if rate else MAX_COUNT
        if seconds is None:
            # A rate run of N units takes N/rate seconds; the margin lets a slow start finish.
            seconds = min(MAX_SECONDS, count / rate * 1.5 + 5) if rate else MAX_SECONDS
        return cls(count, seconds)


def due_offset(index: int, rate: float) -> float:
    """Seconds after the start at which unit `index` is due at `rate` units/s."""
    return index / rate


def pacing_delay(index: int, rate: float, elapsed: float) -> float:
    """How long to wait before sending unit `index`; 0 when it is due or overdue."""
    return max(0.0, due_offset(index, rate) - elapsed)


class PoisonSink(Protocol):
    def send(self, index: int) -> None: ...


@dataclass
class Placement:
    index: int
    kind: Kind
    order_id: str | None = None
    created_at: datetime | None = None
    """The server's created_at: the start of the placement→final latency."""
    status_code: int | None = None
    error: str | None = None
    seconds: float = 0.0
    """Round trip of the POST as the client saw it."""


@dataclass
class PlacementRun:
    started_at: datetime
    elapsed: float = 0.0
    placements: list[Placement] = field(default_factory=list)
    poison_sent: int = 0
    max_lag: float = 0.0
    """Rate mode: the furthest the dispatcher fell behind its schedule, in seconds."""

    @property
    def placed(self) -> list[Placement]:
        return [p for p in self.placements if p.order_id is not None]

    @property
    def failed(self) -> list[Placement]:
        return [p for p in self.placements if p.order_id is None]


async def place_one(
    client: aiohttp.ClientSession, workload: Workload, index: int, kind: Kind, keys: bool
) -> Placement:
    """POST one order. With an Idempotency-Key, a timeout or a 5xx is retried with the
    same key: the API then answers with the order the first try may have made, so an
    ambiguous failure never leaves an order that the run does not know about."""
    headers = {"Idempotency-Key": workload.idempotency_key(index)} if keys else None
    placement = Placement(index, kind)
    started = time.perf_counter()
    for attempt in range(1, (PLACE_ATTEMPTS if keys else 1) + 1):
        placement.error = None
        status = 0
        try:
            async with client.post(
                "/orders", json=workload.order_body(index, kind), headers=headers
            ) as response:
                status = response.status
                body = orjson.loads(await response.read()) if status == 202 else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            placement.error = type(exc).__name__
        else:
            placement.status_code = status
            if body is not None:
                placement.order_id = str(body["id"])
                placement.created_at = datetime.fromisoformat(body["created_at"])
                break
            placement.error = f"HTTP {status}"
            if status < 500:
                break
        if attempt < PLACE_ATTEMPTS:
            await asyncio.sleep(0.1 * attempt)
    placement.seconds = time.perf_counter() - started
    return placement


@dataclass(kw_only=True)
class Placer:
    client: aiohttp.ClientSession
    workload: Workload
    budget: Budget
    poison: PoisonSink | None = None
    idempotency_keys: bool = True
    on_progress: Callable[[int], None] | None = None
    """Called with the units done so far (orders answered plus poison sent)."""
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        if self.poison is None and self.workload.mix.share(Kind.POISON) > 0:
            raise ConfigError("the mix has poison but no broker to put it on (--kafka)")

    async def at_rate(self, rate: float, max_in_flight: int) -> PlacementRun:
        if rate <= 0 or max_in_flight < 1:
            raise ConfigError("--rate and --max-in-flight must be positive")
        run = PlacementRun(started_at=datetime.now(UTC))
        slots = asyncio.Semaphore(max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        start = self.clock()
        kinds = self.workload.mix.kinds()
        for index in range(self.budget.count):
            elapsed = self.clock() - start
            delay = pacing_delay(index, rate, elapsed)
            if elapsed + delay >= self.budget.seconds:
                break
            if delay > 0:
                await asyncio.sleep(delay)
            elif index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            kind = next(kinds)
            if kind is Kind.POISON:
                self._poison(run, index)
                continue
            await slots.acquire()
            run.max_lag = max(run.max_lag, self.clock() - start - due_offset(index, rate))
            task = asyncio.create_task(self._one(run, index, kind))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: slots.release())
        if tasks:
            await asyncio.gather(*tasks)
        run.elapsed = self.clock() - start
        return run

    async def with_clients(self, concurrency: int) -> PlacementRun:
        if concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        run = PlacementRun(started_at=datetime.now(UTC))
        start = self.clock()
        indexes = itertools.count()
        kinds: Iterator[Kind] = self.workload.mix.kinds()

        async def client_loop() -> None:
            while self.clock() - start < self.budget.seconds:
                index = next(indexes)
                if index >= self.budget.count:
                    return
                kind = next(kinds)
                if kind is Kind.POISON:
                    self._poison(run, index)
                    await asyncio.sleep(0)
                    continue
                await self._one(run, index, kind)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        run.elapsed = self.clock() - start
        return run

    def _poison(self, run: PlacementRun, index: int) -> None:
        assert self.poison is not None
        self.poison.send(index)
        run.poison_sent += 1
        self._progress(run)

    async def _one(self, run: PlacementRun, index: int, kind: Kind) -> None:
        placement = await place_one(self.client, self.workload, index, kind, self.idempotency_keys)
        run.placements.append(placement)
        self._progress(run)

    def _progress(self, run: PlacementRun) -> None:
        if self.on_progress is not None:
            self.on_progress(len(run.placements) + run.poison_sent)
