"""What the relay needs from a broker: publish a batch, report each event's fate.

The relay depends on this Protocol only; `outbox.kafka.KafkaPublisher` is the
confluent-kafka implementation, and tests may pass a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from outbox.errors import PublishError
from outbox.event import ClaimedEvent


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishResult:
    """The delivery report of one event: delivered (error None) or not."""

    id: int
    """The outbox row id of the event."""
    error: PublishError | None = None
    delivered_at: float | None = None
    """Wall-clock epoch seconds at which the broker acknowledged the event."""

    @property
    def ok(self) -> bool:
        return self.error is None


def never() -> bool:
    return False


class Publisher(Protocol):
    def publish(
        self, events: Sequence[ClaimedEvent], *, cancelled: Callable[[], bool] = never
    ) -> list[PublishResult]:
        """Publish `events` in order; return one result per event, in the same order.

        An event counts as delivered only once the broker acknowledged it. Failures are
        reported in the results, never raised. `cancelled` is polled while waiting, so a
        stopping relay is not held up by a broker that does not answer.
        """
        ...

    def idle(self) -> None:
        """Serve background work (statistics, error callbacks) while no batch is in flight.

        Called by the relay between batches and while it waits for rows; must not block.
        """
        ...

    def close(self) -> None:
        """Deliver or drop what is still queued, briefly, and release the connection."""
        ...
