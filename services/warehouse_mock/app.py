"""Composition root of the warehouse mock: wires stock, faults, stats and routes into FastAPI.

Order of work for a reservation call: schema validation (422), ``Idempotency-Key`` (400),
then injected faults (outage, failure, terminal, latency), then the idempotent reserve.
A timeout fault lets the reserve happen and only then holds the response back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

from services.common.http_errors import install_error_handlers
from services.common.tracing import FASTAPI_TELEMETRY
from services.warehouse_mock.admin import admin_router
from services.warehouse_mock.faults import FaultDecision, FaultInjector, FaultKind
from services.warehouse_mock.middleware import BodySizeLimit, RequestRecorder
from services.warehouse_mock.models import (
    BatchLineResult,
    BatchOut,
    BatchRequest,
    CallStats,
    Health,
    ItemLine,
    ReservationOut,
    ReservationRequest,
    StatsReport,
    StockSummary,
    error_responses,
)
from services.warehouse_mock.settings import WarehouseMockSettings
from services.warehouse_mock.stats import Metrics, Stats
from services.warehouse_mock.stock import (
    IdempotencyConflict,
    Line,
    OutOfStock,
    Reservation,
    Stock,
    UnknownReservation,
)

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
MAX_KEY_LENGTH = 200
STOCK_LEVELS_SHOWN = 200

_FAULT_DETAIL = {
    FaultKind.OUTAGE: "warehouse unavailable (injected outage)",
    FaultKind.FAILURE: "injected failure",
    FaultKind.TERMINAL: "rejected by warehouse",
}


def create_app(
    settings: WarehouseMockSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the mock. ``clock``, ``rng`` and ``sleep`` are injectable so tests are exact."""
    rng = rng if rng is not None else random.Random(settings.warehouse_fault_seed)
    start_rng_state = rng.getstate()
    registry = registry if registry is not None else CollectorRegistry()
    stats = Stats(Metrics(registry))
    injector = FaultInjector(settings.warehouse_faults, clock=clock, rng=rng)

    def fresh_stock() -> Stock:
        return Stock(
            settings.warehouse_stock,
            default_level=settings.warehouse_default_stock,
            out_of_stock_prefix=settings.warehouse_out_of_stock_prefix,
        )

    # One-element holder, so reset can swap the stock that the route closures see.
    stock = [fresh_stock()]

    def reset() -> None:
        stock[0] = fresh_stock()
        stats.reset()
        rng.setstate(start_rng_state)
        injector.configure(settings.warehouse_faults)

    def report() -> StatsReport:
        levels = stock[0].levels()
        per_order = stock[0].reservations_per_order()
        return StatsReport(
            calls=CallStats(total=sum(stats.calls.values()), by_route=stats.calls_by_route()),
            reservations=stats.reservations,
            releases=stats.releases,
            duplicates_deflected=stats.duplicates_deflected,
            duplicate_reservations=stats.duplicate_reservations,
            orders_reserved=len(per_order),
            orders_reserved_more_than_once=sum(1 for n in per_order.values() if n > 1),
            max_reservations_per_order=max(per_order.values(), default=0),
            lines=stats.lines,
            idempotency_conflicts=stats.idempotency_conflicts,
            out_of_stock=stats.out_of_stock,
            faults={kind.value: count for kind, count in stats.faults.items()},
            stock=StockSummary(
                skus_tracked=len(levels),
                reserved_units=stock[0].reserved_units(),
                levels={sku: levels[sku] for sku in sorted(levels)[:STOCK_LEVELS_SHOWN]},
            ),
        )

    def draw(route: str, key: str) -> FaultDecision:
        """This call's (or batch line's) faults, counted and logged."""
        decision = injector.decide()
        for kind in decision.kinds:
            stats.fault(kind)
        if decision.kind is not None:
            logger.info(
                "fault injected",
                extra={
                    "event.action": "fault_injected",
                    "labels.fault_kind": decision.kind.value,
                    "labels.route": route,
                    "labels.idempotency_key": key,
                    "http.response.status_code": decision.status,
                },
            )
        return decision

    async def apply_faults(route: str, key: str) -> FaultDecision:
        """Draw this call's faults; raise the injected error response, if any."""
        decision = draw(route, key)
        if decision.latency_seconds > 0:
            await sleep(decision.latency_seconds)
        if decision.status is not None:
            headers = None
            if decision.retry_after_seconds is not None:
                headers = {"Retry-After": str(decision.retry_after_seconds)}
            raise HTTPException(decision.status, _fault_detail(decision), headers=headers)
        return decision

    async def hold_if_timeout(decision: FaultDecision) -> None:
        # The work is done; withholding the answer makes the client's timeout ambiguous.
        if decision.delay_after_seconds > 0:
            await sleep(decision.delay_after_seconds)

    def reserve_line(key: str, order_id: str, items: list[ItemLine]) -> LineAnswer:
        """The idempotent reserve of one reservation, as a status and a body."""
        labels = {"labels.order_id": order_id, "labels.reservation_id": key}
        lines = [Line(item.sku, item.quantity) for item in items]
        stats.lines += 1
        try:
            outcome = stock[0].reserve(key, order_id, lines)
        except OutOfStock as exc:
            stats.out_of_stock += 1
            logger.info(str(exc), extra={"event.action": "reservation_out_of_stock", **labels})
            return LineAnswer(
                409,
                {
                    "detail": str(exc),
                    "sku": exc.sku,
                    "requested": exc.requested,
                    "available": exc.available,
                },
            )
        except IdempotencyConflict as exc:
            stats.idempotency_conflicts += 1
            logger.warning(str(exc), extra={"event.action": "idempotency_conflict", **labels})
            return LineAnswer(422, {"detail": str(exc)})
        if outcome.created:
            stats.reservations += 1
            logger.info("reservation made", extra={"event.action": "reservation_made", **labels})
            if outcome.duplicate_of:
                # A second reservation for one order: the client minted a fresh key on retry.
                stats.duplicate_reservations += 1
                logger.warning(
                    "order reserved again under a different idempotency key",
                    extra={
                        "event.action": "duplicate_reservation",
                        "labels.earlier_reservation_ids": ",".join(outcome.duplicate_of),
                        **labels,
                    },
                )
            return LineAnswer(201, reservation=outcome.reservation)
        stats.duplicates_deflected += 1
        logger.info("duplicate deflected", extra={"event.action": "duplicate_deflected", **labels})
        return LineAnswer(200, reservation=outcome.reservation)

    app = FastAPI(
        title="steadfast warehouse mock",
        version="1.0.0",
        description="Stock reservations with tunable, seeded faults.",
        # A redirect is a status no operation documents; "/reservations/%2F" must be a 404.
        redirect_slashes=False,
        telemetry=FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.warehouse_max_body_bytes)
    app.add_middleware(RequestRecorder, record=stats.call)  # outermost: sees 413s too

    @app.post(
        "/reservations",
        status_code=201,
        response_model=ReservationOut,
        tags=["reservations"],
        responses={
            200: {"model": ReservationOut, "description": "Duplicate: the original reservation"},
            **error_responses(400, 409, 413, 422, 429, 503, "4XX", "5XX"),
        },
    )
    async def reserve(
        request_body: ReservationRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=MAX_KEY_LENGTH,
                description="Reservation id. A retry must send the same key and body.",
            ),
        ] = None,
    ) -> ReservationOut | JSONResponse:
        """Reserve all items or none. Idempotent on the Idempotency-Key header.

        The same key and body again answers 200 with the reservation as it is now (RELEASED
        if it was released since); the same key with another body is a 422.
        """
        if idempotency_key is None:
            raise HTTPException(400, "Idempotency-Key header is required")
        decision = await apply_faults("POST /reservations", idempotency_key)
        answer = reserve_line(idempotency_key, request_body.order_id, request_body.items)
        await hold_if_timeout(decision)
        if answer.reservation is None:
            return JSONResponse(status_code=answer.status, content=answer.body)
        response.status_code = answer.status
        return ReservationOut.of(answer.reservation)

    @app.post(
        "/reservations/batch",
        response_model=BatchOut,
        tags=["reservations"],
        responses=error_responses(413, 422, "4XX", "5XX"),
    )
    async def reserve_batch(request_body: BatchRequest) -> BatchOut:
        """Reserve many orders in one call; every line is its own reservation.

        Faults are drawn per line, exactly as for one `POST /reservations` each: a line
        may fail (with its own status and Retry-After) while the others succeed. Latency
        is the slowest line's. A line drawing a timeout is applied but answered 504, the
        ambiguous failure a batch API reports per line (the call as a whole is not held
        back). Lines run in request order, so two lines of one order apply in that order.
        """
        route = "POST /reservations/batch"
        decisions = [draw(route, line.reservation_id) for line in request_body.reservations]
        latency = max(d.latency_seconds for d in decisions)
        if latency > 0:
            await sleep(latency)
        results = []
        for line, decision in zip(request_body.reservations, decisions, strict=True):
            if decision.status is not None:
                results.append(
                    BatchLineResult(
                        reservation_id=line.reservation_id,
                        order_id=line.order_id,
                        status=decision.status,
                        detail=_fault_detail(decision),
                        retry_after_seconds=decision.retry_after_seconds,
                    )
                )
                continue
            answer = reserve_line(line.reservation_id, line.order_id, line.items)
            timed_out = decision.delay_after_seconds > 0
            results.append(
                BatchLineResult(
                    reservation_id=line.reservation_id,
                    order_id=line.order_id,
                    status=504 if timed_out else answer.status,
                    detail="timed out after the reservation was applied"
                    if timed_out
                    else (None if answer.body is None else str(answer.body.get("detail"))),
                    reservation=None
                    if timed_out or answer.reservation is None
                    else ReservationOut.of(answer.reservation),
                )
            )
        return BatchOut(results=results)

    @app.delete(
        "/reservations/{reservation_id}",
        response_model=ReservationOut,
        tags=["reservations"],
        responses=error_responses(404, 422, 429, 503, "4XX", "5XX"),
    )
    async def release(
        reservation_id: Annotated[str, Path(min_length=1, max_length=MAX_KEY_LENGTH)],
    ) -> ReservationOut:
        """Return a reservation's stock. Idempotent: releasing again answers the same."""
        decision = await apply_faults("DELETE /reservations/{reservation_id}", reservation_id)
        try:
            reservation, changed = stock[0].release(reservation_id)
        except UnknownReservation as exc:
            await hold_if_timeout(decision)
            raise HTTPException(404, str(exc)) from exc
        if changed:
            stats.releases += 1
            logger.info(
                "reservation released",
                extra={
                    "event.action": "reservation_released",
                    "labels.order_id": reservation.order_id,
                    "labels.reservation_id": reservation_id,
                },
            )
        await hold_if_timeout(decision)
        return ReservationOut.of(reservation)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        return Health()

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["ops"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(
        admin_router(
            token=_token(settings),
            injector=injector,
            report=report,
            reset=reset,
        )
    )
    _document_key_as_required(app)
    return app


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What one reservation line came to: a status, and a reservation or an error body."""

    status: int
    body: dict[str, Any] | None = None
    reservation: Reservation | None = None


def _fault_detail(decision: FaultDecision) -> str:
    return (_FAULT_DETAIL.get(decision.kind) if decision.kind else None) or "injected failure"


def _document_key_as_required(app: FastAPI) -> None:
    """Publish Idempotency-Key as the required header it is.

    It is optional to FastAPI only so that a missing key gets the 400 this API promises
    instead of FastAPI's 422; the published contract must still say it is required.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for parameter in schema["paths"]["/reservations"]["post"]["parameters"]:
                if parameter["name"] == "Idempotency-Key":
                    parameter["required"] = True
                    parameter["schema"] = {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_KEY_LENGTH,
                        "title": "Idempotency-Key",
                    }
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _token(settings: WarehouseMockSettings) -> SecretStr:
    # AdminAuth guarantees a token after validation; this narrows the Optional for mypy.
    if settings.admin_token is None:
        raise ValueError("settings carry no admin token")
    return settings.admin_token
