"""Retry policies: how long to wait before the next attempt, and when to give up.

A policy is a small frozen value object (the shape of procrastinate's `RetryStrategy`):
kw-only, validated in `__post_init__`, and it answers `next_delay(attempt, rng)` with a
number of seconds or None ("give up"). `attempt` counts the attempts already made,
1-based: after the first failure the caller asks `next_delay(1, rng)` and gets delay(1).

    LogarithmicPolicy  min(max_delay, base_delay * ln(e + n - 1)) * (1 +/- jitter)  (default)
    ExponentialPolicy  min(max_delay, base_delay * factor ** (n - 1)) * (1 +/- jitter)
    FixedPolicy        delay * (1 +/- jitter)

The logarithmic curve grows fast at first and then flattens, so a long outage is retried
steadily instead of at ever-growing gaps. Jitter is drawn from an injected
`random.Random`, so schedules are reproducible in tests.

A server's Retry-After is a floor: we never come back sooner than it asked.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RetryPolicy(ABC):
    """Base of every policy: jitter, the attempt cap, and the give-up rule."""

    jitter: float = 0.1
    """Relative spread: the delay is multiplied by a uniform draw from [1 - j, 1 + j]."""
    max_attempts: int = 8
    """Total attempts, the first one included. 1 means "never retry"."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")

    @abstractmethod
    def base_delay_for(self, attempt: int) -> float:
        """The delay after `attempt` attempts, before jitter: the policy's curve."""

    def next_delay(
        self, attempt: int, rng: random.Random, retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait after `attempt` attempts, or None when the policy gives up."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt!r}")
        if attempt >= self.max_attempts:
            return None
        delay = self.base_delay_for(attempt)
        if self.jitter:
            delay *= rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > delay:
            # Jitter never pulls us below what the server asked for (a nonsensical
            # Retry-After, negative or infinite, is ignored rather than obeyed).
            delay = retry_after
        return delay


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class LogarithmicPolicy(RetryPolicy):
    """delay(n) = min(max_delay, base_delay * ln(e + n - 1)): base at n=1, then flattening."""

    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("base_delay", self.base_delay)
        _positive("max_delay", self.max_delay)
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")

    def base_delay_for(self, attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * math.log(math.e + attempt - 1)))


@dataclass(frozen=True, kw_only=True)
class ExponentialPolicy(RetryPolicy):
    """delay(n) = min(max_delay, base_delay * factor ** (n - 1)).

    Written here rather than wrapping tenacity's `wait_exponential`: tenacity's strategies
    read the attempt from a mutable `RetryCallState` (a frozen policy would have to build
    one per call) and its jittered variants draw from the global `random`, not an injected
    `Random`. The maths is one line; the only care needed is overflow, handled below.
    """

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("base_delay", self.base_delay)
        _positive("max_delay", self.max_delay)
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")
        if not (self.factor >= 1.0 and math.isfinite(self.factor)):
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")

    def base_delay_for(self, attempt: int) -> float:
        exponent = attempt - 1
        # Compare in log space: factor ** exponent overflows a float long before
        # max_attempts stops mattering (attempt 1100 at factor 2).
        if self.factor > 1.0 and exponent * math.log(self.factor) >= math.log(
            self.max_delay / self.base_delay
        ):
            return self.max_delay
        return float(min(self.max_delay, self.base_delay * self.factor**exponent))


@dataclass(frozen=True, kw_only=True)
class FixedPolicy(RetryPolicy):
    """The same delay every time."""

    delay: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.delay >= 0 and math.isfinite(self.delay)):
            raise ValueError(f"delay must be a finite number >= 0, got {self.delay!r}")

    def base_delay_for(self, attempt: int) -> float:
        return float(self.delay)


POLICY_KINDS: Mapping[str, type[RetryPolicy]] = MappingProxyType(
    {
        "logarithmic": LogarithmicPolicy,
        "exponential": ExponentialPolicy,
        "fixed": FixedPolicy,
    }
)


def policy_from_config(kind: str, **params: Any) -> RetryPolicy:
    """Build a policy by name ("logarithmic" | "exponential" | "fixed") from plain values."""
    try:
        cls = POLICY_KINDS[kind.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown retry policy {kind!r}; expected one of {sorted(POLICY_KINDS)}"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        # An unknown parameter name is a configuration error like any other.
        raise ValueError(f"bad parameters for {kind} policy: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class PolicyTable:
    """The policy for each error class, and the default for the rest."""

    default: RetryPolicy = field(default_factory=LogarithmicPolicy)
    by_error_class: Mapping[str, RetryPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only copy: the table is shared by every task and must not change under them.
        object.__setattr__(self, "by_error_class", MappingProxyType(dict(self.by_error_class)))

    def for_class(self, error_class: str) -> RetryPolicy:
        return self.by_error_class.get(error_class, self.default)

    @classmethod
    def from_config(
        cls,
        default: Mapping[str, Any],
        by_error_class: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> PolicyTable:
        """From plain mappings, each with a "kind" key and the policy's parameters."""

        def build(spec: Mapping[str, Any]) -> RetryPolicy:
            params = dict(spec)
            kind = params.pop("kind", "logarithmic")
            return policy_from_config(str(kind), **params)

        return cls(
            default=build(default),
            by_error_class={name: build(spec) for name, spec in (by_error_class or {}).items()},
        )
