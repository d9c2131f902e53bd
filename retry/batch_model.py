"""The values and the Protocol of the batch engine: deliveries in, outcomes out.

A consumer hands the engine one poll batch as `Delivery` values (attempt 1, no row); a
scheduler hands it claimed retry rows (the row, and the attempt it is on). The
application supplies a `BatchHandler`, written for batches: one read for what the whole
batch needs, one call (or a few) for the side effects, one write for the outcomes. The
engine answers with one `Outcome` per delivery, in delivery order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from psycopg import AsyncConnection

from retry.model import Classification, Message
from retry.rows import RetryRow


@dataclass(frozen=True, kw_only=True)
class Delivery:
    message: Message
    attempt: int = 1
    """The attempt this delivery is: 1 for a live message, attempts + 1 for a re-drive."""
    row: RetryRow | None = None
    """The retry row being re-driven; None for a message straight from the broker."""
    broken: Exception | None = None
    """Why the record could not even be made into a usable message (parked as poison)."""

    @property
    def redrive(self) -> bool:
        return self.row is not None


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    PARKED = "parked"
    """Retryable: (re)parked PENDING until its next attempt."""
    PARKED_BEHIND = "parked_behind"
    """Not attempted: an earlier message of its key is still parked."""
    DEAD = "dead"
    DUPLICATE = "duplicate"
    """Already taken care of (a redelivery, or another consumer recorded it first)."""
    BLOCKED = "blocked"
    """The breaker refused the call: nothing was written; offer it again later."""
    LEASE_LOST = "lease_lost"
    """A re-drive whose lease another scheduler took over: its result was dropped."""


WRITTEN = frozenset({Verdict.SUCCEEDED, Verdict.PARKED, Verdict.PARKED_BEHIND, Verdict.DEAD})


@dataclass(kw_only=True)
class Outcome:
    delivery: Delivery
    verdict: Verdict
    prepared: object = None
    """What the handler's `prepare` made of the message (None for poison)."""
    result: object = None
    """The handler's `call` result, on success."""
    classification: Classification | None = None
    delay: float | None = None
    """PARKED: seconds until the next attempt."""
    max_attempts: int = 0
    retry_id: int | None = None
    next_attempt_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> Message:
        return self.delivery.message

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    @property
    def row(self) -> RetryRow | None:
        return self.delivery.row


class BatchHandler(Protocol):
    """Application code for one kind of message, written for batches.

    `prepare` decodes every message and reads what the batch needs in one query; for a
    message it cannot use it returns the exception instead (classified, usually poison).
    `calls_dependency` says whether an item will reach the guarded dependency: only those
    take a breaker permit. `call` performs the side effects of the admitted items
    (idempotently: it may run again after a crash) and returns, per item, a result or the
    exception it failed with. `record` writes the outcomes into the application's tables
    inside the engine's transaction.
    """

    name: str

    async def prepare(
        self, conn: AsyncConnection[Any], messages: Sequence[Message]
    ) -> Sequence[object]: ...

    def calls_dependency(self, prepared: object) -> bool: ...

    async def call(
        self, prepared: Sequence[object], attempts: Sequence[int]
    ) -> Sequence[object]: ...

    async def record(self, conn: AsyncConnection[Any], outcomes: Sequence[Outcome]) -> None: ...
