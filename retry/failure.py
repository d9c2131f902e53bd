"""The retry decision: what a classified failure at a given attempt leads to.

Pure and in one place, so the live consumer and the re-drive follow the same rules. The
Protocols name what the engine needs from a policy table and a classifier
(`retry.policy.PolicyTable`, `retry.classify.Classifier` implement them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from retry.model import Classification, FailureKind

UNEXPECTED = "unexpected"
"""The error class of a failure nobody classified (a bug, an unknown exception)."""


class Policy(Protocol):
    @property
    def max_attempts(self) -> int: ...
    def next_delay(
        self, attempt: int, rng: random.Random, retry_after: float | None, /
    ) -> float | None: ...


class Policies(Protocol):
    def for_class(self, error_class: str, /) -> Policy: ...


class Classifying(Protocol):
    @property
    def unexpected_max_attempts(self) -> int: ...
    def classify(self, exc: Exception, /) -> Classification: ...


@dataclass(frozen=True)
class FailurePlan:
    state: str
    """PENDING (retry after `delay`) or DEAD."""
    delay: float | None
    max_attempts: int


def plan_failure(
    classification: Classification,
    *,
    attempt: int,
    round_start: int,
    max_attempts: int,
    policy: Policy,
    rng: random.Random,
    unexpected_cap: int,
) -> FailurePlan:
    """What a failure at `attempt` leads to.

    `round_start` is how many attempts were made before the current round (an operator's
    requeue starts a new one), so the policy sees attempt 1 again after a requeue.
    """
    if classification.kind is not FailureKind.RETRYABLE:
        return FailurePlan("DEAD", None, max_attempts)
    in_round = max(1, attempt - round_start)
    if classification.error_class == UNEXPECTED and in_round >= unexpected_cap:
        return FailurePlan("DEAD", None, max_attempts)
    if attempt >= max_attempts:
        return FailurePlan("DEAD", None, max_attempts)
    delay = policy.next_delay(in_round, rng, classification.retry_after)
    if delay is None:
        return FailurePlan("DEAD", None, max_attempts)
    return FailurePlan("PENDING", max(0.0, delay), max_attempts)
