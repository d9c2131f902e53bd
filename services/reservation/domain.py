"""The order domain: request bodies, statuses and the events on the order topic.

Events are versioned JSON. The consumer decodes them strictly: anything that does not
match its schema is poison and is parked as DEAD with its raw bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from retry.errors import UndecodableMessage

SCHEMA_VERSION: Literal[1] = 1
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    RESERVED = "RESERVED"
    RETRY_PENDING = "RETRY_PENDING"
    REJECTED = "REJECTED"
    DEAD = "DEAD"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {OrderStatus.RESERVED, OrderStatus.REJECTED, OrderStatus.DEAD, OrderStatus.CANCELLED}
)
# A cancel can only undo what may still hold stock.
CANCELLABLE = frozenset({OrderStatus.PENDING, OrderStatus.RETRY_PENDING, OrderStatus.RESERVED})


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: str = Field(pattern=SKU_PATTERN, examples=["SKU-1"])
    quantity: int = Field(gt=0, le=10_000)


class PlaceOrder(BaseModel):
    """Body of POST /orders."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=CUSTOMER_PATTERN, examples=["customer-42"])
    items: list[OrderItem] = Field(min_length=1, max_length=100)

    def request_hash(self) -> str:
        """A stable fingerprint of the body, to tell an idempotent replay from a reuse."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class OrderPlaced(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: Literal["OrderPlaced"] = "OrderPlaced"
    schema_version: Literal[1] = SCHEMA_VERSION
    order_id: UUID
    customer_id: str
    items: list[OrderItem] = Field(min_length=1, max_length=100)
    placed_at: datetime


class OrderCancelled(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: Literal["OrderCancelled"] = "OrderCancelled"
    schema_version: Literal[1] = SCHEMA_VERSION
    order_id: UUID
    requested_at: datetime


OrderEvent = Annotated[OrderPlaced | OrderCancelled, Field(discriminator="event_type")]
_event_adapter: TypeAdapter[OrderPlaced | OrderCancelled] = TypeAdapter(OrderEvent)


def decode_event(raw: bytes) -> OrderPlaced | OrderCancelled:
    """Strictly decode one event; raise `UndecodableMessage` (poison) on any mismatch."""
    try:
        return _event_adapter.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"msg": str(exc)}
        signal = "decode" if first.get("type") == "json_invalid" else "schema"
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UndecodableMessage(
            f"{signal} error at {where or '<root>'}: {first['msg']}", signal=signal
        ) from exc
