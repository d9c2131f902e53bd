"""The warehouse adapter (httpx). It translates every failure into `CallFailed` with a
signal ("timeout", "connect", "http_<status>") and decides nothing else: whether a
failure is retried is the classifier's call, made from configuration.

`reserve_many` is the consumer's hot path: one `POST /reservations/batch` per chunk of
orders, every line answered (and so classified) on its own; a failure of the call as a
whole (timeout, connection, a 5xx for the request) fails each of its lines alike.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import orjson

from retry.errors import CallFailed
from services.reservation.metrics import WarehouseMetrics
from services.reservation.settings import WarehouseClientConfig

BATCH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ReserveLine:
    order_id: UUID
    items: list[dict[str, Any]]


class WarehouseClient:
    def __init__(self, client: httpx.AsyncClient, metrics: WarehouseMetrics) -> None:
        self._client = client
        self._metrics = metrics

    @classmethod
    def create(cls, config: WarehouseClientConfig, metrics: WarehouseMetrics) -> WarehouseClient:
        timeout = httpx.Timeout(
            config.read_timeout_seconds,
            connect=config.connect_timeout_seconds,
            pool=config.read_timeout_seconds,
        )
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        client = httpx.AsyncClient(base_url=config.base_url, timeout=timeout, limits=limits)
        return cls(client, metrics)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def reserve(
        self, order_id: UUID, items: list[dict[str, Any]], traceparent: str | None
    ) -> dict[str, Any]:
        """Reserve stock for an order. The order id is the idempotency key, so a retry
        after an ambiguous failure (a timeout after the warehouse acted) never reserves twice.
        """
        response = await self._call(
            "reserve",
            "POST",
            "/reservations",
            json={"order_id": str(order_id), "items": items},
            headers=_headers(traceparent, idempotency_key=str(order_id)),
        )
        body: dict[str, Any] = response.json()
        return body

    async def reserve_many(
        self, lines: Sequence[ReserveLine], traceparent: str | None = None
    ) -> list[dict[str, Any] | CallFailed]:
        """Reserve stock for many orders; per line the reservation or its `CallFailed`.

        The order id is each line's idempotency key, as for `reserve`.
        """
        chunks = [lines[i : i + BATCH_CHUNK] for i in range(0, len(lines), BATCH_CHUNK)]
        answers = await asyncio.gather(*(self._reserve_chunk(c, traceparent) for c in chunks))
        return [answer for chunk in answers for answer in chunk]

    async def _reserve_chunk(
        self, lines: Sequence[ReserveLine], traceparent: str | None
    ) -> list[dict[str, Any] | CallFailed]:
        body = {
            "reservations": [
                {"reservation_id": str(x.order_id), "order_id": str(x.order_id), "items": x.items}
                for x in lines
            ]
        }
        started = time.perf_counter()
        try:
            response = await self._call(
                "reserve_batch",
                "POST",
                "/reservations/batch",
                json=body,
                headers=_headers(traceparent),
                observe=False,
            )
        except CallFailed as failed:
            self._observe_lines(started, [failed.signal] * len(lines))
            return [failed] * len(lines)
        results = orjson.loads(response.content)["results"]
        out: list[dict[str, Any] | CallFailed] = []
        statuses = []
        for result in results:
            status = int(result["status"])
            statuses.append(str(status))
            if status in (200, 201):
                out.append(result["reservation"])
            else:
                retry_after = result.get("retry_after_seconds")
                out.append(
                    CallFailed(
                        f"http_{status}",
                        f"HTTP {status}: {result.get('detail')}",
                        retry_after=float(retry_after) if retry_after is not None else None,
                    )
                )
        if len(out) != len(lines):
            short = CallFailed("http_502", f"batch answered {len(out)} of {len(lines)} lines")
            self._observe_lines(started, [short.signal] * len(lines))
            return [short] * len(lines)
        self._observe_lines(started, statuses)
        return out

    def _observe_lines(self, started: float, statuses: Sequence[str]) -> None:
        """One observation per line: failure ratios count calls, whatever their batching."""
        seconds = time.perf_counter() - started
        for status in statuses:
            self._metrics.request_seconds.labels("reserve", status.removeprefix("http_")).observe(
                seconds
            )

    async def release(self, order_id: UUID, traceparent: str | None) -> bool:
        """Release an order's reservation; False when the warehouse never held one."""
        response = await self._call(
            "release",
            "DELETE",
            f"/reservations/{order_id}",
            headers=_headers(traceparent),
            ok_statuses=(404,),
        )
        return response.status_code != 404

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        ok_statuses: tuple[int, ...] = (),
        observe: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        started = time.perf_counter()
        status = "error"
        try:
            response = await self._client.request(method, url, **kwargs)
            status = str(response.status_code)
        except httpx.TimeoutException as exc:
            status = "timeout"
            raise CallFailed("timeout", f"warehouse {operation} timed out") from exc
        except httpx.TransportError as exc:
            status = "connect"
            raise CallFailed("connect", f"warehouse unreachable: {type(exc).__name__}") from exc
        finally:
            if observe:
                self._metrics.request_seconds.labels(operation, status).observe(
                    time.perf_counter() - started
                )
        if response.is_success or response.status_code in ok_statuses:
            return response
        raise CallFailed(
            f"http_{response.status_code}",
            _detail(response),
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )


def _headers(traceparent: str | None, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {}
    if traceparent:
        headers["traceparent"] = traceparent
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {detail if detail is not None else body}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
