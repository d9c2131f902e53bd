"""Stock levels, atomic reservation and the idempotency rules, without HTTP."""

from __future__ import annotations

import pytest

from services.warehouse_mock.stock import (
    IdempotencyConflict,
    Line,
    OutOfStock,
    ReservationStatus,
    Stock,
    UnknownReservation,
)


def make_stock() -> Stock:
    return Stock({"A": 5, "B": 2}, default_level=100)


@pytest.mark.parametrize(
    ("sku", "level"),
    [("A", 5), ("B", 2), ("UNLISTED", 100), ("OOS-1", 0), ("oos-lowercase", 100)],
)
def test_start_levels(sku: str, level: int) -> None:
    assert make_stock().available(sku) == level


def test_a_listed_sku_beats_the_out_of_stock_prefix() -> None:
    assert Stock({"OOS-LISTED": 4}, default_level=100).available("OOS-LISTED") == 4


def test_negative_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Stock({"A": -1}, default_level=1)


@pytest.mark.parametrize(
    ("lines", "short_sku", "requested", "available"),
    [
        ([Line("A", 1), Line("B", 3)], "B", 3, 2),
        ([Line("A", 6)], "A", 6, 5),
        ([Line("A", 1), Line("OOS-9", 1)], "OOS-9", 1, 0),
        # Lines for one SKU are summed: 3 + 3 > 5 even though each line alone fits.
        ([Line("A", 3), Line("B", 1), Line("A", 3)], "A", 6, 5),
    ],
)
def test_a_short_line_reserves_nothing(
    lines: list[Line], short_sku: str, requested: int, available: int
) -> None:
    stock = make_stock()
    before = {sku: stock.available(sku) for sku in ("A", "B", "OOS-9")}
    with pytest.raises(OutOfStock) as caught:
        stock.reserve("k1", "order-1", lines)
    assert (caught.value.sku, caught.value.requested, caught.value.available) == (
        short_sku,
        requested,
        available,
    )
    assert {sku: stock.available(sku) for sku in before} == before
    assert stock.get("k1") is None
    assert stock.reserved_units() == 0


def test_reserve_takes_every_line() -> None:
    stock = make_stock()
    outcome = stock.reserve("k1", "order-1", [Line("A", 2), Line("B", 2), Line("A", 1)])
    assert outcome.created
    assert outcome.duplicate_of == ()
    assert outcome.reservation.status is ReservationStatus.RESERVED
    assert (stock.available("A"), stock.available("B")) == (2, 0)
    assert stock.reserved_units() == 5


def test_the_same_key_and_request_is_answered_not_redone() -> None:
    stock = make_stock()
    first = stock.reserve("k1", "order-1", [Line("A", 2)])
    again = stock.reserve("k1", "order-1", [Line("A", 2)])
    assert not again.created
    assert again.reservation == first.reservation
    assert stock.available("A") == 3
    assert stock.reservation_count() == 1


@pytest.mark.parametrize(
    ("order_id", "lines"),
    [
        ("order-1", [Line("A", 3)]),
        ("order-2", [Line("A", 2)]),
        ("order-1", [Line("A", 2), Line("B", 1)]),
        ("order-1", [Line("B", 2)]),
    ],
)
def test_the_same_key_with_a_different_request_is_a_conflict(
    order_id: str, lines: list[Line]
) -> None:
    stock = make_stock()
    stock.reserve("k1", "order-1", [Line("A", 2)])
    with pytest.raises(IdempotencyConflict):
        stock.reserve("k1", order_id, lines)
    assert stock.available("A") == 3


def test_a_fresh_key_for_a_reserved_order_is_flagged_as_a_duplicate() -> None:
    stock = make_stock()
    stock.reserve("k1", "order-1", [Line("A", 1)])
    stock.reserve("k2", "order-2", [Line("A", 1)])
    outcome = stock.reserve("k3", "order-1", [Line("A", 1)])
    assert outcome.created
    assert outcome.duplicate_of == ("k1",)
    assert stock.available("A") == 2  # it really did reserve twice: that is the bug to catch


def test_release_returns_stock_and_is_idempotent() -> None:
    stock = make_stock()
    stock.reserve("k1", "order-1", [Line("A", 2), Line("B", 2)])
    released, changed = stock.release("k1")
    assert changed
    assert released.status is ReservationStatus.RELEASED
    assert (stock.available("A"), stock.available("B")) == (5, 2)
    again, changed_again = stock.release("k1")
    assert not changed_again
    assert again == released
    assert (stock.available("A"), stock.available("B")) == (5, 2)
    assert stock.reserved_units() == 0


def test_release_of_an_unknown_id_raises() -> None:
    with pytest.raises(UnknownReservation):
        make_stock().release("never")


def test_a_key_refused_for_stock_may_succeed_once_stock_returns() -> None:
    stock = make_stock()
    stock.reserve("k1", "order-1", [Line("B", 2)])
    with pytest.raises(OutOfStock):
        stock.reserve("k2", "order-2", [Line("B", 1)])
    stock.release("k1")
    assert stock.reserve("k2", "order-2", [Line("B", 1)]).created


def test_a_known_key_after_release_returns_the_released_reservation() -> None:
    stock = make_stock()
    stock.reserve("k1", "order-1", [Line("A", 1)])
    stock.release("k1")
    outcome = stock.reserve("k1", "order-1", [Line("A", 1)])
    assert not outcome.created
    assert outcome.reservation.status is ReservationStatus.RELEASED
    assert stock.available("A") == 5


@pytest.mark.parametrize("lines", [[], [Line("A", 0)], [Line("A", -2)]])
def test_malformed_lines_are_refused(lines: list[Line]) -> None:
    stock = make_stock()
    with pytest.raises(ValueError):
        stock.reserve("k1", "order-1", lines)
    assert stock.get("k1") is None
