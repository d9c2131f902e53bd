"""Every error the outbox raises or reports derives from `OutboxError`.

    OutboxError
    ├── InvalidEventError      an OutboxEvent that can never be written (caught at construction)
    ├── StoreUnavailableError  the outbox table could not be read or written (database down)
    └── PublishError           one event was not delivered to the broker (reported, not raised)

Foreign exceptions (SQLAlchemy, confluent-kafka) are translated where they occur, in the
store and the publisher adapter, and never leak past them.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Root of the outbox's errors."""


class InvalidEventError(OutboxError, ValueError):
    """An event is malformed: a missing topic or key, or a header that is not a string."""


class StoreUnavailableError(OutboxError):
    """The database refused or dropped a store operation; the relay backs off and retries."""


class PublishError(OutboxError):
    """The broker did not accept one event.

    `code` is the adapter's short error name (librdkafka's, e.g. `_MSG_TIMED_OUT`), so logs
    and `last_error` group failures by cause.
    """

    def __init__(self, message: str, *, code: str = "unknown", retriable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"
