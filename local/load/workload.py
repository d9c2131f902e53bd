"""The workload mix: which kind of unit each step of a run is, and the order body for it.

Kinds and what each should end as:

- ``healthy``: a SKU the mock stocks plentifully → RESERVED.
- ``out_of_stock``: a SKU with the mock's out-of-stock prefix (``OOS-`` by default; such
  SKUs start at 0 units) → 409 → REJECTED, a terminal failure.
- ``flaky``: the mock has no per-SKU faults, only global ones, so a flaky order is a
  healthy order and the flakiness is a global ``failure_rate`` equal to the flaky share
  (set by the run unless ``--faults`` says otherwise). Retries then hit every kind alike;
  flaky orders still end RESERVED.
- ``poison``: not an order at all; an undecodable event put straight onto the topic.

The kinds follow a smooth weighted round-robin, not random draws: every prefix of a run
holds the mix as closely as integers allow, so a 40-unit test run with 5% poison has
exactly 2 poison events, and a run is the same every time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from local.load import ConfigError


class Kind(enum.StrEnum):
    HEALTHY = "healthy"
    OUT_OF_STOCK = "out_of_stock"
    FLAKY = "flaky"
    POISON = "poison"


# The final status each order kind should reach (poison never becomes an order).
EXPECTED_STATUS = {
    Kind.HEALTHY: "RESERVED",
    Kind.FLAKY: "RESERVED",
    Kind.OUT_OF_STOCK: "REJECTED",
}
ALIASES = {"oos": Kind.OUT_OF_STOCK, "out-of-stock": Kind.OUT_OF_STOCK}


@dataclass(frozen=True)
class Mix:
    weights: Mapping[Kind, int]

    def __post_init__(self) -> None:
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError("mix weights must not be negative")
        if sum(self.weights.values()) <= 0:
            raise ConfigError("the mix needs at least one positive weight")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``healthy=80,out_of_stock=10,flaky=5,poison=5``; weights, not necessarily %."""
        weights: dict[Kind, int] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            kind = ALIASES.get(name) or _kind(name)
            if kind is None:
                known = ", ".join(k.value for k in Kind)
                raise ConfigError(f"unknown kind {name!r} in mix; known: {known}")
            if not sep or not value.strip().isdigit():
                raise ConfigError(f"{part.strip()!r}: expected KIND=WEIGHT, e.g. healthy=80")
            if kind in weights:
                raise ConfigError(f"{kind.value} appears twice in the mix")
            weights[kind] = int(value)
        return cls(weights)

    def share(self, kind: Kind) -> float:
        return self.weights.get(kind, 0) / sum(self.weights.values())

    def kinds(self) -> Iterator[Kind]:
        """Endless smooth weighted round-robin (nginx's upstream algorithm)."""
        active = [(k, w) for k, w in self.weights.items() if w > 0]
        total = sum(w for _, w in active)
        current = dict.fromkeys((k for k, _ in active), 0)
        while True:
            for kind, weight in active:
                current[kind] += weight
            best = max(active, key=lambda kw: current[kw[0]])[0]
            current[best] -= total
            yield best

    def describe(self) -> str:
        return ",".join(f"{k.value}={w}" for k, w in self.weights.items())


def _kind(name: str) -> Kind | None:
    try:
        return Kind(name)
    except ValueError:
        return None


@dataclass(frozen=True, kw_only=True)
class Workload:
    mix: Mix
    run_id: str
    skus: int = 100
    out_of_stock_prefix: str = "OOS-"

    def __post_init__(self) -> None:
        if self.skus < 1:
            raise ConfigError("--skus must be at least 1")

    def order_body(self, index: int, kind: Kind) -> dict[str, Any]:
        if kind is Kind.POISON:
            raise ValueError("poison units are events, not orders")
        slot = index % self.skus
        sku = {
            Kind.HEALTHY: f"LOAD-{slot}",
            Kind.FLAKY: f"FLAKY-{slot}",
            Kind.OUT_OF_STOCK: f"{self.out_of_stock_prefix}LOAD-{slot}",
        }[kind]
        return {
            "customer_id": f"load-{self.run_id}-{index % 97}",
            "items": [{"sku": sku, "quantity": 1}],
        }

    def idempotency_key(self, index: int) -> str:
        return f"load-{self.run_id}-{index}"
