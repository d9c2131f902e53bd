"""Request and response bodies of the warehouse mock's HTTP API.

Request models are strict and forbid extra fields: the OpenAPI schema is the contract, and
anything outside it is rejected with 422 rather than coerced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.warehouse_mock.stock import Reservation, ReservationStatus

MAX_ITEMS = 100


def _unicode(value: str) -> str:
    # JSON may escape a lone surrogate ("\ud800"); Python decodes it to a str that cannot be
    # encoded as UTF-8, so echoing it in the response crashed into a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class ItemLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sku: Annotated[Text, Field(min_length=1, max_length=100)]
    quantity: Annotated[int, Field(gt=0, le=1_000_000)]


class ReservationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    order_id: Annotated[Text, Field(min_length=1, max_length=200)]
    items: Annotated[list[ItemLine], Field(min_length=1, max_length=MAX_ITEMS)]


MAX_BATCH = 1000


class BatchLine(ReservationRequest):
    reservation_id: Annotated[
        Text,
        Field(min_length=1, max_length=200, description="Idempotency key of this line"),
    ]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reservations: Annotated[list[BatchLine], Field(min_length=1, max_length=MAX_BATCH)]


class ReservationOut(BaseModel):
    reservation_id: str
    order_id: str
    items: list[ItemLine]
    status: ReservationStatus

    @classmethod
    def of(cls, reservation: Reservation) -> ReservationOut:
        return cls(
            reservation_id=reservation.reservation_id,
            order_id=reservation.order_id,
            items=[ItemLine(sku=line.sku, quantity=line.quantity) for line in reservation.lines],
            status=reservation.status,
        )


class ErrorDetail(BaseModel):
    detail: str


class OutOfStockDetail(BaseModel):
    detail: str
    sku: str
    requested: int
    available: int


class FieldError(BaseModel):
    """One item of FastAPI's validation error list (it may carry more keys, e.g. input)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class Unprocessable(BaseModel):
    """422: a list for schema violations, a sentence for rule violations and injected rejects."""

    detail: str | list[FieldError]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class StockSummary(BaseModel):
    skus_tracked: int = Field(description="SKUs configured or touched so far")
    reserved_units: int = Field(description="Units held by reservations not yet released")
    levels: dict[str, int] = Field(description="Current level per SKU, first 200 by name")


class BatchLineResult(BaseModel):
    reservation_id: str
    order_id: str
    status: int = Field(
        description="What POST /reservations would have answered for this line: 201 made, "
        "200 duplicate, 409 out of stock, 422 conflict or rejected, 429/5xx injected"
    )
    detail: str | None = None
    retry_after_seconds: int | None = None
    reservation: ReservationOut | None = None


class BatchOut(BaseModel):
    results: list[BatchLineResult] = Field(description="One per line, in request order")


class CallStats(BaseModel):
    total: int
    by_route: dict[str, dict[str, int]] = Field(
        description='"METHOD /route/template" → status code → count'
    )


class StatsReport(BaseModel):
    calls: CallStats
    reservations: int = Field(description="New reservations made")
    releases: int = Field(description="Reservations released (repeats not counted)")
    duplicates_deflected: int = Field(description="Same key and body again: answered, not redone")
    duplicate_reservations: int = Field(
        description="New reservations for an order already reserved under another key; "
        "a correct client keeps this at 0"
    )
    orders_reserved: int = Field(description="Distinct orders with at least one reservation")
    orders_reserved_more_than_once: int = Field(
        description="Orders with more than one reservation created (whatever the keys)"
    )
    max_reservations_per_order: int = Field(description="Most reservations made for one order")
    lines: int = Field(description="Reservation lines handled, single calls and batch lines")
    idempotency_conflicts: int = Field(description="Same key with a different body")
    out_of_stock: int
    faults: dict[str, int] = Field(description="Injected faults by kind")
    stock: StockSummary


def error_responses(*codes: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error bodies this API sends."""
    described: dict[int | str, dict[str, Any]] = {
        400: {
            "model": ErrorDetail,
            "description": "Missing Idempotency-Key header, or a body that cannot be decoded",
        },
        401: {
            "model": ErrorDetail,
            "description": "Missing or wrong bearer token",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        404: {"model": ErrorDetail, "description": "Unknown reservation id"},
        409: {"model": OutOfStockDetail, "description": "Stock is short; nothing was reserved"},
        413: {"model": ErrorDetail, "description": "Request body too large"},
        422: {
            "model": Unprocessable,
            "description": "Invalid request, idempotency key reused with a different body, "
            "or an injected terminal rejection",
        },
        429: {
            "model": ErrorDetail,
            "description": "Injected fault",
            "headers": {
                "Retry-After": {
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "Seconds to wait before retrying",
                }
            },
        },
        503: {"model": ErrorDetail, "description": "Injected outage or failure"},
        "4XX": {"model": ErrorDetail, "description": "Injected fault (see /admin/faults)"},
        "5XX": {"model": ErrorDetail, "description": "Injected fault (see /admin/faults)"},
    }
    return {code: described[code] for code in codes}
