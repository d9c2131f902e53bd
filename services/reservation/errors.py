"""Exceptions of the reservation service.

    ReservationError
    ├── OrderNotFound           no order with that id
    ├── IdempotencyConflict     an Idempotency-Key was reused with a different body
    └── InvalidTransition       the order's status does not allow the request (e.g. cancel)

Warehouse failures are not here: the warehouse adapter raises `retry.errors.CallFailed`
so that the retry engine's classifier is the one place that decides what they mean.
"""

from __future__ import annotations


class ReservationError(Exception):
    """Root of the reservation service's own exceptions."""


class OrderNotFound(ReservationError):
    pass


class IdempotencyConflict(ReservationError):
    pass


class InvalidTransition(ReservationError):
    pass
