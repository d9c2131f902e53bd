"""Exceptions of the retry engine.

Adapters translate foreign failures (HTTP status codes, timeouts, decode errors) into
`CallFailed` or `UndecodableMessage` with a *signal* string; the classifier then turns the
signal into a `Classification` from its configured table. Nothing else decides whether a
failure is retried.

    RetryEngineError
    ├── CallFailed            a dependency call failed; `signal` says how ("timeout", "http_503")
    ├── UndecodableMessage    the message bytes or schema are invalid (poison)
    ├── LeaseLost             a row's lease expired and another worker owns it now
    └── BreakerOpen           the breaker refused the call
"""

from __future__ import annotations


class RetryEngineError(Exception):
    """Root of every exception raised by the `retry` package."""


class CallFailed(RetryEngineError):
    """A dependency call failed. `signal` is the key the classification table is driven by.

    Signals are short strings chosen by the adapter: "timeout", "connect", "http_<status>"
    (e.g. "http_503", "http_409"). `retry_after` carries a server's Retry-After in seconds.
    """

    def __init__(self, signal: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{signal}: {reason}")
        self.signal = signal
        self.reason = reason
        self.retry_after = retry_after


class UndecodableMessage(RetryEngineError):
    """The message cannot be decoded or fails its schema: poison, never retried."""

    def __init__(self, reason: str, *, signal: str = "decode") -> None:
        super().__init__(reason)
        self.signal = signal
        self.reason = reason


class LeaseLost(RetryEngineError):
    """The row's lease expired and was claimed by another worker; drop the result."""


class BreakerOpen(RetryEngineError):
    """The circuit breaker is open (or out of half-open permits)."""
