"""The workload mix: parsing, exact proportions, and the order bodies per kind."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from local.load import ConfigError
from local.load.workload import Kind, Mix, Workload


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("healthy=100", {Kind.HEALTHY: 100}),
        (
            "healthy=80,out_of_stock=10,flaky=5,poison=5",
            {Kind.HEALTHY: 80, Kind.OUT_OF_STOCK: 10, Kind.FLAKY: 5, Kind.POISON: 5},
        ),
        ("healthy=3, oos=1", {Kind.HEALTHY: 3, Kind.OUT_OF_STOCK: 1}),
        ("HEALTHY=1,out-of-stock=1,", {Kind.HEALTHY: 1, Kind.OUT_OF_STOCK: 1}),
        ("healthy=0,poison=1", {Kind.HEALTHY: 0, Kind.POISON: 1}),
    ],
)
def test_parse_accepts(text: str, expected: dict[Kind, int]) -> None:
    assert dict(Mix.parse(text).weights) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one positive"),
        ("healthy=0", "at least one positive"),
        ("sick=5", "unknown kind"),
        ("healthy", "expected KIND=WEIGHT"),
        ("healthy=-1", "expected KIND=WEIGHT"),
        ("healthy=1.5", "expected KIND=WEIGHT"),
        ("healthy=1,healthy=2", "twice"),
        ("oos=1,out_of_stock=1", "twice"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Mix.parse(text)


def test_share_is_the_weight_over_the_total() -> None:
    mix = Mix.parse("healthy=6,poison=2")
    assert mix.share(Kind.HEALTHY) == 0.75
    assert mix.share(Kind.POISON) == 0.25
    assert mix.share(Kind.FLAKY) == 0.0


@pytest.mark.parametrize(
    "text", ["healthy=80,out_of_stock=10,flaky=5,poison=5", "healthy=1,poison=1", "flaky=7"]
)
def test_kinds_hold_the_mix_exactly_per_cycle(text: str) -> None:
    mix = Mix.parse(text)
    total = sum(mix.weights.values())
    drawn = Counter(itertools.islice(mix.kinds(), total * 3))
    assert drawn == Counter({k: w * 3 for k, w in mix.weights.items() if w})


def test_kinds_spread_the_rare_ones_over_every_prefix() -> None:
    # A short run must still see its share: 40 units of a 5% mix hold exactly 2 poison.
    mix = Mix.parse("healthy=80,out_of_stock=10,flaky=5,poison=5")
    for n in (20, 40, 60, 100):
        drawn = Counter(itertools.islice(mix.kinds(), n))
        assert drawn[Kind.POISON] == n * 5 // 100
        assert drawn[Kind.OUT_OF_STOCK] == n * 10 // 100


def test_order_bodies_by_kind() -> None:
    workload = Workload(mix=Mix.parse("healthy=1"), run_id="r1", skus=10)
    healthy = workload.order_body(13, Kind.HEALTHY)
    assert healthy["items"] == [{"sku": "LOAD-3", "quantity": 1}]
    assert healthy["customer_id"].startswith("load-r1-")
    assert workload.order_body(13, Kind.OUT_OF_STOCK)["items"][0]["sku"] == "OOS-LOAD-3"
    assert workload.order_body(13, Kind.FLAKY)["items"][0]["sku"] == "FLAKY-3"
    assert workload.idempotency_key(13) == "load-r1-13"
    with pytest.raises(ValueError):
        workload.order_body(1, Kind.POISON)


def test_bodies_are_valid_api_requests() -> None:
    from services.reservation.domain import PlaceOrder

    workload = Workload(mix=Mix.parse("healthy=1"), run_id="abc", out_of_stock_prefix="NONE-")
    for kind in (Kind.HEALTHY, Kind.FLAKY, Kind.OUT_OF_STOCK):
        PlaceOrder.model_validate(workload.order_body(99, kind))


def test_skus_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        Workload(mix=Mix.parse("healthy=1"), run_id="x", skus=0)
