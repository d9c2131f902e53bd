"""In-memory stock per SKU, and reservations keyed by reservation id (the idempotency key).

Plain code, no framework, so the rules are tested without HTTP::

    StockError
    ├── OutOfStock            a line cannot be covered; nothing was reserved
    ├── IdempotencyConflict   the key is known, but was used with a different request
    └── UnknownReservation    release of an id that was never reserved

Every method runs without awaiting, so on the event loop each call is atomic: the check
for stock and the decrement can never interleave with another request.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class StockError(Exception):
    """Root of the errors this module raises."""


class OutOfStock(StockError):
    def __init__(self, sku: str, requested: int, available: int) -> None:
        super().__init__(
            f"insufficient stock for SKU {sku!r}: requested {requested}, available {available}"
        )
        self.sku = sku
        self.requested = requested
        self.available = available


class IdempotencyConflict(StockError):
    def __init__(self, reservation_id: str) -> None:
        super().__init__("idempotency key reused with a different body")
        self.reservation_id = reservation_id


class UnknownReservation(StockError):
    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"no reservation with id {reservation_id!r}")
        self.reservation_id = reservation_id


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    order_id: str
    lines: tuple[Line, ...]
    status: ReservationStatus = ReservationStatus.RESERVED


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    reservation: Reservation
    created: bool
    """False when the same key and request were seen before (a deflected duplicate)."""
    duplicate_of: tuple[str, ...] = ()
    """Other reservation ids already held by this order: a client that mints new keys."""


class Stock:
    """Stock levels and reservations.

    SKUs not listed in ``levels`` start at ``default_level`` when first seen, except those
    starting with ``out_of_stock_prefix``, which start at 0 so tests can force a 409.
    """

    def __init__(
        self,
        levels: Mapping[str, int],
        *,
        default_level: int,
        out_of_stock_prefix: str = "OOS-",
    ) -> None:
        if default_level < 0 or any(level < 0 for level in levels.values()):
            raise ValueError("stock levels must not be negative")
        self._levels = dict(levels)
        self._default_level = default_level
        self._oos_prefix = out_of_stock_prefix
        self._reservations: dict[str, Reservation] = {}
        self._by_order: dict[str, list[str]] = {}

    def available(self, sku: str) -> int:
        if sku in self._levels:
            return self._levels[sku]
        if self._oos_prefix and sku.startswith(self._oos_prefix):
            return 0
        return self._default_level

    def get(self, reservation_id: str) -> Reservation | None:
        return self._reservations.get(reservation_id)

    def reserve(self, reservation_id: str, order_id: str, lines: Sequence[Line]) -> ReserveOutcome:
        """Reserve every line or none; a known id with the same request returns it unchanged."""
        lines = tuple(lines)
        if not lines:
            raise ValueError("a reservation needs at least one line")
        existing = self._reservations.get(reservation_id)
        if existing is not None:
            if existing.order_id != order_id or existing.lines != lines:
                raise IdempotencyConflict(reservation_id)
            return ReserveOutcome(existing, created=False)
        # The same SKU may appear on several lines; what must be covered is the sum.
        needed: Counter[str] = Counter()
        for line in lines:
            if line.quantity <= 0:
                raise ValueError(f"quantity must be positive (SKU {line.sku!r})")
            needed[line.sku] += line.quantity
        for sku, quantity in needed.items():
            available = self.available(sku)
            if quantity > available:
                raise OutOfStock(sku, quantity, available)
        for sku, quantity in needed.items():
            self._levels[sku] = self.available(sku) - quantity
        reservation = Reservation(reservation_id, order_id, lines)
        self._reservations[reservation_id] = reservation
        earlier = tuple(self._by_order.get(order_id, ()))
        self._by_order.setdefault(order_id, []).append(reservation_id)
        return ReserveOutcome(reservation, created=True, duplicate_of=earlier)

    def release(self, reservation_id: str) -> tuple[Reservation, bool]:
        """Return the stock of a reservation. Idempotent: the flag says whether it changed."""
        reservation = self._reservations.get(reservation_id)
        if reservation is None:
            raise UnknownReservation(reservation_id)
        if reservation.status is ReservationStatus.RELEASED:
            return reservation, False
        for line in reservation.lines:
            self._levels[line.sku] = self.available(line.sku) + line.quantity
        released = Reservation(
            reservation.reservation_id,
            reservation.order_id,
            reservation.lines,
            ReservationStatus.RELEASED,
        )
        self._reservations[reservation_id] = released
        return released, True

    def levels(self) -> dict[str, int]:
        """Current level of every SKU that is configured or has been touched."""
        return dict(self._levels)

    def reserved_units(self) -> int:
        return sum(
            line.quantity
            for reservation in self._reservations.values()
            if reservation.status is ReservationStatus.RESERVED
            for line in reservation.lines
        )

    def reservation_count(self) -> int:
        return len(self._reservations)

    def reservations_per_order(self) -> dict[str, int]:
        """Reservations created per order id: the side effect a duplicate would repeat."""
        return {order_id: len(ids) for order_id, ids in self._by_order.items()}
