"""OutboxEvent validates itself, so a bad event fails in the request that made it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from outbox.errors import InvalidEventError, OutboxError
from outbox.store import OutboxEvent

GOOD: dict[str, Any] = {
    "event_id": uuid.UUID(int=1),
    "aggregate_id": "order-1",
    "topic": "orders",
    "key": "order-1",
    "payload": {"a": 1},
    "headers": {"event_type": "OrderPlaced", "schema_version": "1"},
}


def test_a_good_event_is_frozen() -> None:
    event = OutboxEvent(**GOOD)
    with pytest.raises(AttributeError):
        event.key = "other"  # type: ignore[misc]
    assert OutboxEvent(**{**GOOD, "headers": {}}).headers == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"topic": ""}, "topic"),
        ({"key": ""}, "key"),
        ({"key": None}, "key"),
        ({"aggregate_id": ""}, "aggregate_id"),
        ({"payload": [1, 2]}, "payload"),
        ({"headers": {"n": 1}}, "header"),
        ({"headers": {"event_id": "x"}}, "set by the relay"),
    ],
)
def test_a_bad_event_is_refused(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason) as caught:
        OutboxEvent(**{**GOOD, **change})
    assert isinstance(caught.value, OutboxError)
    assert isinstance(caught.value, ValueError)
