"""The two shapes an outbox event takes: written by the app, claimed by a relay."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from outbox.errors import InvalidEventError

# The relay adds this header itself, so consumers can deduplicate on it.
EVENT_ID_HEADER = "event_id"


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxEvent:
    """One message to publish once the caller's transaction commits.

    `key` is the Kafka key and the unit of ordering: events with one key are published in
    the order they were added. `headers` carry the event type, schema version and
    traceparent; the relay adds `event_id`.
    """

    event_id: uuid.UUID
    aggregate_id: str
    topic: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Caught here, in the request that made the event, rather than as a relay that
        # retries a row forever.
        if not isinstance(self.event_id, uuid.UUID):
            raise InvalidEventError(f"event_id must be a UUID, got {type(self.event_id).__name__}")
        for name in ("aggregate_id", "topic", "key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidEventError(f"{name} must be a non-empty string")
        if not isinstance(self.payload, dict):
            raise InvalidEventError("payload must be a JSON object (a dict)")
        for name, value in self.headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise InvalidEventError(f"header {name!r} must map a str to a str")
        if EVENT_ID_HEADER in self.headers:
            raise InvalidEventError(f"header {EVENT_ID_HEADER!r} is set by the relay")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedEvent:
    """A row a relay holds a lease on, ready to publish.

    `payload` is the JSON text as stored, already encoded: the relay never parses it.
    """

    id: int
    event_id: uuid.UUID
    topic: str
    key: str
    payload: bytes
    headers: dict[str, str]
    created_at: datetime
    attempts: int
