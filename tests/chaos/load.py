"""The chaos suite's clients: paced order placement that survives a dying API.

Each order has its own Idempotency-Key and body, fixed before the first try. A client
retries a POST that got no answer (connection refused or reset, timeout) or a 5xx with
the *same* key and body, as a well-behaved client must, until it gets an answer or its
own deadline passes. What it learned is kept per key, so the audit can tell an order
acknowledged with 202 from one whose POST never got an answer.

The runner owns an event loop in a background thread, so a test can kill and restart
processes synchronously while orders keep arriving.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

# Every 20th order asks for a SKU the mock holds none of: a business "no" (REJECTED).
REJECT_EVERY = 20
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


@dataclass
class Placement:
    key: str
    body: dict[str, Any]
    order_id: str | None = None
    status: int | None = None
    tries: int = 0
    unanswered: int = 0
    """Tries that got no HTTP answer at all (the API died or was restarting)."""
    last_error: str | None = None
    cancel_status: int | None = None
    """The answer to the customer's cancel, when this order was one to cancel."""


def order_body(index: int) -> dict[str, Any]:
    sku = "OOS-1" if index % REJECT_EVERY == REJECT_EVERY - 1 else f"SKU-{index % 7}"
    return {"customer_id": f"chaos-{index % 13}", "items": [{"sku": sku, "quantity": 1}]}


@dataclass
class LoadRunner:
    """Place `total` orders at about `rate` per second with at most `concurrency` open."""

    base_url: str
    prefix: str
    total: int
    rate: float
    concurrency: int
    client_deadline: float
    cancel_every: int = 0
    """Every Nth acknowledged order is cancelled by its customer, 0 to 1.5 s after the 202
    (before, during and after its reservation); 0: no cancels."""
    placements: list[Placement] = field(init=False)
    answered: int = field(init=False, default=0)
    in_flight: int = field(init=False, default=0)
    started_at: float = field(init=False, default=0.0)
    finished_at: float | None = field(init=False, default=None)
    _thread: threading.Thread | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _error: BaseException | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.placements = [
            Placement(key=f"{self.prefix}-{i}", body=order_body(i)) for i in range(self.total)
        ]

    def start(self) -> LoadRunner:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def wait_answered(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < count and self.running:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.answered}/{count} orders answered in {timeout}s")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"load still running after {timeout}s: {self.summary()}")
        if self._error is not None:
            raise AssertionError(f"load driver failed: {self._error!r}") from self._error

    def acknowledged(self) -> dict[str, str]:
        """Idempotency key → order id of every order answered 202."""
        return {p.key: p.order_id for p in self.placements if p.order_id is not None}

    def summary(self) -> dict[str, int]:
        return {
            "orders": self.total,
            "acknowledged": len(self.acknowledged()),
            "answered": self.answered,
            "unanswered_tries": sum(p.unanswered for p in self.placements),
            "gave_up": sum(1 for p in self.placements if p.status is None),
            "cancels_accepted": sum(1 for p in self.placements if p.cancel_status == 202),
        }

    def cancels(self) -> dict[str, int]:
        """Order id → the HTTP status its cancel got, for every order a customer cancelled."""
        return {
            p.order_id: p.cancel_status
            for p in self.placements
            if p.order_id is not None and p.cancel_status is not None
        }

    def _main(self) -> None:
        try:
            asyncio.run(self._place_all())
        except BaseException as exc:  # reported by join(), in the test's thread
            self._error = exc
        finally:
            self.finished_at = time.monotonic()

    async def _place_all(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(10.0), limits=limits, trust_env=False
        ) as client:

            async def one(index: int, placement: Placement) -> None:
                async with gate:
                    await self._place(client, placement)
                # Offset 3: never an out-of-stock order (index % REJECT_EVERY == 19).
                if (
                    self.cancel_every
                    and index % self.cancel_every == min(3, self.cancel_every - 1)
                    and placement.order_id
                ):
                    await asyncio.sleep((index // self.cancel_every % 4) * 0.5)
                    async with gate:
                        await self._cancel(client, placement)

            tasks = []
            for index, placement in enumerate(self.placements):
                # Paced by the clock, not by answers: a stalled API must not slow the offer.
                due = self.started_at + index / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(one(index, placement)))
            await asyncio.gather(*tasks)

    async def _place(self, client: httpx.AsyncClient, placement: Placement) -> None:
        deadline = time.monotonic() + self.client_deadline
        backoff = 0.1
        with self._lock:
            self.in_flight += 1
        try:
            while time.monotonic() < deadline:
                placement.tries += 1
                try:
                    response = await client.post(
                        "/orders", json=placement.body, headers={"Idempotency-Key": placement.key}
                    )
                except httpx.TransportError as exc:
                    placement.unanswered += 1
                    placement.last_error = type(exc).__name__
                else:
                    if response.status_code not in RETRYABLE_STATUSES:
                        placement.status = response.status_code
                        if response.status_code == 202:
                            placement.order_id = str(response.json()["id"])
                        else:
                            placement.last_error = response.text[:200]
                        with self._lock:
                            self.answered += 1
                        return
                    placement.last_error = f"HTTP {response.status_code}"
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _cancel(self, client: httpx.AsyncClient, placement: Placement) -> None:
        """Retried like a placement: a cancel is safe to repeat (409 once it is final)."""
        deadline = time.monotonic() + self.client_deadline
        while time.monotonic() < deadline:
            try:
                response = await client.post(f"/orders/{placement.order_id}/cancel")
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code not in RETRYABLE_STATUSES:
                placement.cancel_status = response.status_code
                return
            await asyncio.sleep(0.2)
