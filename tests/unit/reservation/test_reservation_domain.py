"""Order validation and event decoding: what the API accepts and what the consumer calls poison."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from retry.errors import UndecodableMessage
from services.reservation.domain import OrderPlaced, PlaceOrder, decode_event

VALID: dict[str, Any] = {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 2}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "items": []}, "items"),
        ({**VALID, "items": [{"sku": "S", "quantity": 1}] * 101}, "items"),
        ({**VALID, "items": [{"sku": "S", "quantity": 0}]}, "items.0.quantity"),
        ({**VALID, "items": [{"sku": "S", "quantity": -3}]}, "items.0.quantity"),
        ({**VALID, "items": [{"sku": "S", "quantity": "two"}]}, "items.0.quantity"),
        ({**VALID, "items": [{"sku": "", "quantity": 1}]}, "items.0.sku"),
        ({**VALID, "items": [{"sku": "bad sku!", "quantity": 1}]}, "items.0.sku"),
        ({**VALID, "items": [{"sku": "S", "quantity": 1, "price": 3}]}, "items.0.price"),
        ({**VALID, "customer_id": ""}, "customer_id"),
        ({**VALID, "unknown": True}, "unknown"),
        ({"items": VALID["items"]}, "customer_id"),
    ],
)
def test_invalid_orders_are_rejected_with_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        PlaceOrder.model_validate(body)
    locations = {".".join(str(p) for p in err["loc"]) for err in excinfo.value.errors()}
    assert field in locations


def test_request_hash_ignores_key_order_but_not_content() -> None:
    a = PlaceOrder.model_validate(VALID)
    b = PlaceOrder.model_validate(json.loads(json.dumps(VALID, sort_keys=True)))
    c = PlaceOrder.model_validate({**VALID, "items": [{"sku": "SKU-1", "quantity": 3}]})
    assert a.request_hash() == b.request_hash()
    assert a.request_hash() != c.request_hash()


def _placed() -> bytes:
    event = OrderPlaced(
        order_id=uuid.uuid4(),
        customer_id="c",
        items=[{"sku": "A", "quantity": 1}],  # type: ignore[list-item]
        placed_at=datetime.now(UTC),
    )
    return event.model_dump_json().encode()


def test_a_valid_event_round_trips() -> None:
    raw = _placed()
    assert decode_event(raw).model_dump_json().encode() == raw


@pytest.mark.parametrize(
    ("raw", "signal"),
    [
        (b"\xff\xfe not json", "decode"),
        (b"", "decode"),
        (b"[]", "schema"),
        (b'{"event_type": "OrderExploded", "order_id": "x"}', "schema"),
        (b'{"event_type": "OrderPlaced", "schema_version": 2}', "schema"),
        (_placed().replace(b'"quantity":1', b'"quantity":0'), "schema"),
    ],
)
def test_poison_is_reported_with_its_signal(raw: bytes, signal: str) -> None:
    with pytest.raises(UndecodableMessage) as excinfo:
        decode_event(raw)
    assert excinfo.value.signal == signal
    assert excinfo.value.reason
