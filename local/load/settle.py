"""After placement: wait until every placed order is final, and find the poison rows.

Cheap polling on purpose. Per round it lists only the *open* orders (PENDING,
RETRY_PENDING) newer than the run's first order, 500 per page, and stops paging at the
first order older than that: once the pipeline keeps up this is one small query, whatever
the size of the run. Final orders are listed once, at the end, and their `finalized_at`
(set by the database in the same transaction as the journey's final step, so the two
times are equal) gives the latency without one GET /orders/{id} per order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from local.load import TargetError

OPEN = ("PENDING", "RETRY_PENDING")
FINAL = ("RESERVED", "REJECTED", "DEAD", "CANCELLED")
PAGE = 500
POLL_ATTEMPTS = 5
# The retry table's `created_at` and our wall clock are on the same machine (loopback
# only), but a row may be stamped a moment before the first order's own timestamp.
CLOCK_SLACK = timedelta(seconds=5)

Params = list[tuple[str, str | int | float | bool | None]]


class _Transient(TargetError):
    """A failed read worth repeating (server error or connection trouble)."""


@dataclass(frozen=True)
class Final:
    status: str
    created_at: datetime
    finalized_at: datetime

    @property
    def seconds(self) -> float:
        return (self.finalized_at - self.created_at).total_seconds()


@dataclass
class Settled:
    finals: dict[str, Final] = field(default_factory=dict)
    still_pending: dict[str, str] = field(default_factory=dict)
    """Open at the deadline: id → PENDING or RETRY_PENDING."""
    missing: set[str] = field(default_factory=set)
    """Placed (202) but found in no status at all."""
    poison_rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Poison key → (retry row state, error class)."""
    seconds: float = 0.0
    polls: int = 0

    @property
    def lost(self) -> int:
        return len(self.still_pending) + len(self.missing)

    @property
    def poison_dead(self) -> int:
        return sum(1 for state, _ in self.poison_rows.values() if state == "DEAD")


class Settler:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        admin_token: str | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else None
        self._clock = clock
        self._sleep = sleep

    async def _get(self, path: str, params: Params, admin: bool = False) -> Any:
        """One read, retried a few times: a poll that hits a blip (a 5xx, a dropped
        connection) must not end a run whose orders are all fine."""
        headers = self._admin if admin else None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(POLL_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            sleep=self._sleep,
            reraise=True,
        ):
            with attempt:
                return await self._get_once(path, params, headers)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _get_once(self, path: str, params: Params, headers: dict[str, str] | None) -> Any:
        try:
            response = await self._client.get(path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise _Transient(f"GET {path}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise _Transient(f"GET {path}: HTTP {response.status_code} {response.text[:300]}")
        if response.status_code != 200:
            raise TargetError(f"GET {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    async def _orders(
        self, statuses: Collection[str], since: datetime, max_pages: int
    ) -> list[dict[str, Any]]:
        """Orders in `statuses` created at or after `since`, newest first, bounded."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params: Params = [("status", s) for s in statuses]
            params.append(("limit", PAGE))
            if cursor:
                params.append(("cursor", cursor))
            page = await self._get("/orders", params)
            for item in page["items"]:
                if datetime.fromisoformat(item["created_at"]) < since:
                    return found
                found.append(item)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return found

    async def open_orders(self, ids: Collection[str], since: datetime) -> dict[str, str]:
        pages = len(ids) // PAGE * 2 + 10
        return {
            o["id"]: o["status"] for o in await self._orders(OPEN, since, pages) if o["id"] in ids
        }

    async def final_orders(self, ids: Collection[str], since: datetime) -> dict[str, Final]:
        pages = len(ids) // PAGE * 2 + 10
        return {
            o["id"]: Final(
                o["status"],
                datetime.fromisoformat(o["created_at"]),
                datetime.fromisoformat(o["finalized_at"]),
            )
            for o in await self._orders(FINAL, since, pages)
            if o["id"] in ids and o["finalized_at"]
        }

    async def poison_rows(
        self, prefix: str, since: datetime, max_pages: int
    ) -> dict[str, tuple[str, str]]:
        """Retry rows whose key starts with `prefix`, in any state, created since `since`."""
        if self._admin is None:
            raise TargetError("checking poison needs the admin token (--admin-token)")
        rows: dict[str, tuple[str, str]] = {}
        cursor: str | None = None
        for _ in range(max_pages):
            params: Params = [
                ("created_from", (since - CLOCK_SLACK).isoformat()),
                ("limit", PAGE),
            ]
            if cursor:
                params.append(("cursor", cursor))
            page = await self._get("/admin/retries", params, admin=True)
            for item in page["items"]:
                key = item.get("key") or ""
                if key.startswith(prefix):
                    rows[key] = (item["state"], item["error_class"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return rows

    async def settle(
        self,
        ids: Collection[str],
        *,
        since: datetime,
        within: float,
        poll_interval: float = 0.5,
        poison_expected: int = 0,
        poison_prefix: str = "",
        poison_since: datetime | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Settled:
        """Poll until nothing is open and every poison event is parked, or `within` s pass.

        Not `asyncio.timeout`: the final listing must still run after the deadline.
        """
        started = self._clock()
        deadline = started + within
        result = Settled()
        open_now: dict[str, str] = {}
        poison_pages = (len(ids) + poison_expected) // PAGE * 2 + 10
        while True:
            result.polls += 1
            open_now = await self.open_orders(ids, since)
            if poison_expected:
                result.poison_rows = await self.poison_rows(
                    poison_prefix, poison_since or since, poison_pages
                )
            if on_progress is not None:
                on_progress(len(ids) - len(open_now))
            parked = result.poison_dead >= poison_expected
            if (not open_now and parked) or self._clock() >= deadline:
                break
            await self._sleep(max(0.0, min(poll_interval, deadline - self._clock())))
        # Finals last: an order open a moment ago may be final by now, never the reverse.
        result.finals = await self.final_orders(ids, since)
        result.still_pending = {i: s for i, s in open_now.items() if i not in result.finals}
        result.missing = set(ids) - set(result.finals) - set(result.still_pending)
        result.seconds = self._clock() - started
        return result
