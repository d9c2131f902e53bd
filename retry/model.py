"""The values and Protocols the retry engine is built from.

The engine is framework-neutral: a consumer adapter (faust, confluent-kafka, ...) turns
what its broker delivered into a `Message`, and the application supplies a
`retry.batch_model.BatchHandler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class FailureKind(StrEnum):
    RETRYABLE = "RETRYABLE"
    TERMINAL = "TERMINAL"
    POISON = "POISON"


@dataclass(frozen=True, kw_only=True)
class Classification:
    """What a failure means. Produced only by the classifier."""

    kind: FailureKind
    error_class: str
    """Stable, low-cardinality name: "timeout", "http_503", "out_of_stock", "poison", ..."""
    reason: str
    retry_after: float | None = None
    counts_against_breaker: bool = False
    """True for failures that say the dependency is unhealthy (timeouts, 5xx)."""


@dataclass(frozen=True, kw_only=True)
class Message:
    """One message as the broker delivered it (or as a retry row stored it)."""

    topic: str
    value: bytes
    key: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    consumer_group: str | None = None

    @property
    def message_id(self) -> str:
        """The producer's event id when present, else the message's coordinates."""
        event_id = self.headers.get("event_id")
        if event_id:
            return event_id
        return f"{self.topic}:{self.partition}:{self.offset}"
