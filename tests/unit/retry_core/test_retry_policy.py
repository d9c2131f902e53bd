"""Retry policies: exact curves, caps, jitter bounds, give-up, Retry-After, validation."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retry.policy import (
    ExponentialPolicy,
    FixedPolicy,
    LogarithmicPolicy,
    PolicyTable,
    RetryPolicy,
    policy_from_config,
)

RNG = random.Random(7)
BIG = 10**9  # attempts never run out in the curve tests


def _delay(
    policy: RetryPolicy, attempt: int, rng: random.Random, retry_after: float | None = None
) -> float:
    delay = policy.next_delay(attempt, rng, retry_after)
    assert delay is not None
    return delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, 2.0),  # base * ln(e) = base
        (2, 2.626523375036445),  # base * ln(e + 1)
        (3, 3.1028894278641017),
        (10, 4.922300343468949),
        (100, 9.244414098448535),
        (1000, 13.81894417250654),
        (1_000_000, 20.0),  # capped
    ],
)
def test_logarithmic_delays_without_jitter(attempt: int, expected: float) -> None:
    policy = LogarithmicPolicy(base_delay=2.0, max_delay=20.0, jitter=0.0, max_attempts=BIG)
    assert policy.next_delay(attempt, RNG) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.5), (2, 1.5), (3, 4.5), (4, 13.5), (5, 30.0), (2000, 30.0)],  # no overflow at 2000
)
def test_exponential_delays_without_jitter(attempt: int, expected: float) -> None:
    policy = ExponentialPolicy(
        base_delay=0.5, factor=3.0, max_delay=30.0, jitter=0.0, max_attempts=BIG
    )
    assert policy.next_delay(attempt, RNG) == pytest.approx(expected)


def test_exponential_with_factor_one_is_constant() -> None:
    policy = ExponentialPolicy(base_delay=3.0, factor=1.0, max_delay=9.0, jitter=0.0)
    assert [policy.next_delay(n, RNG) for n in (1, 2, 5)] == [3.0, 3.0, 3.0]


def test_fixed_delay_is_the_same_every_time() -> None:
    policy = FixedPolicy(delay=4.0, jitter=0.0, max_attempts=BIG)
    assert {policy.next_delay(n, RNG) for n in (1, 2, 50)} == {4.0}


POLICIES: list[RetryPolicy] = [
    LogarithmicPolicy(base_delay=1.0, max_delay=60.0, jitter=0.0, max_attempts=5),
    ExponentialPolicy(base_delay=1.0, factor=2.0, max_delay=60.0, jitter=0.0, max_attempts=5),
    FixedPolicy(delay=1.0, jitter=0.0, max_attempts=5),
]


@pytest.mark.parametrize("policy", POLICIES, ids=type)
@pytest.mark.parametrize(("attempt", "gives_up"), [(1, False), (4, False), (5, True), (9, True)])
def test_gives_up_once_max_attempts_were_made(
    policy: RetryPolicy, attempt: int, gives_up: bool
) -> None:
    assert (policy.next_delay(attempt, RNG) is None) is gives_up


@pytest.mark.parametrize("policy", POLICIES, ids=type)
def test_one_attempt_means_never_retry(policy: RetryPolicy) -> None:
    once = replace(policy, max_attempts=1)
    assert once.next_delay(1, RNG) is None


@pytest.mark.parametrize("policy", POLICIES, ids=type)
def test_attempts_are_one_based(policy: RetryPolicy) -> None:
    with pytest.raises(ValueError, match="1-based"):
        policy.next_delay(0, RNG)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 1.0),
        (0.5, 1.0),
        (1.0, 1.0),
        (30.0, 30.0),
        (600.0, 600.0),
        (-5.0, 1.0),
        (math.inf, 1.0),
        (math.nan, 1.0),
    ],
)
def test_retry_after_is_a_floor(retry_after: float | None, expected: float) -> None:
    policy = LogarithmicPolicy(base_delay=1.0, max_delay=60.0, jitter=0.0)
    assert policy.next_delay(1, RNG, retry_after) == expected


def test_retry_after_wins_over_jitter_below_it() -> None:
    policy = FixedPolicy(delay=10.0, jitter=0.5)
    rng = random.Random(1)
    assert min(_delay(policy, 1, rng, 12.0) for _ in range(200)) >= 12.0


def test_retry_after_does_not_revive_a_policy_that_gave_up() -> None:
    assert FixedPolicy(delay=1.0, max_attempts=2).next_delay(2, RNG, 5.0) is None


def test_jitter_spreads_within_bounds_and_is_reproducible() -> None:
    policy = LogarithmicPolicy(base_delay=10.0, max_delay=10.0, jitter=0.2)
    first = [policy.next_delay(1, random.Random(42)) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same delay
    rng = random.Random(3)
    spread = [_delay(policy, 1, rng) for _ in range(500)]
    assert min(spread) >= 8.0 and max(spread) <= 12.0
    assert max(spread) - min(spread) > 3.0


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (LogarithmicPolicy, {"base_delay": 0}, "base_delay"),
        (LogarithmicPolicy, {"base_delay": -1}, "base_delay"),
        (LogarithmicPolicy, {"base_delay": math.inf}, "base_delay"),
        (LogarithmicPolicy, {"base_delay": 5, "max_delay": 1}, "max_delay"),
        (LogarithmicPolicy, {"jitter": 1.0}, "jitter"),
        (LogarithmicPolicy, {"jitter": -0.1}, "jitter"),
        (LogarithmicPolicy, {"max_attempts": 0}, "max_attempts"),
        (ExponentialPolicy, {"factor": 0.5}, "factor"),
        (ExponentialPolicy, {"max_delay": math.nan}, "max_delay"),
        (FixedPolicy, {"delay": -1}, "delay"),
        (FixedPolicy, {"delay": math.inf}, "delay"),
    ],
)
def test_bad_parameters_are_refused(
    cls: type[RetryPolicy], params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**params)


def test_policies_are_frozen_and_keyword_only() -> None:
    policy = FixedPolicy(delay=1.0)
    with pytest.raises(AttributeError):
        policy.delay = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        FixedPolicy(1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        (
            "logarithmic",
            {"base_delay": 2.0, "max_delay": 9.0},
            LogarithmicPolicy(base_delay=2.0, max_delay=9.0),
        ),
        (" Exponential ", {"factor": 3.0}, ExponentialPolicy(factor=3.0)),
        ("fixed", {"delay": 1.5, "max_attempts": 2}, FixedPolicy(delay=1.5, max_attempts=2)),
    ],
)
def test_policy_from_config_picks_by_name(
    kind: str, params: dict[str, Any], expected: RetryPolicy
) -> None:
    assert policy_from_config(kind, **params) == expected


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("linear", {}, "unknown retry policy"),
        ("fixed", {"base_delay": 1.0}, "bad parameters"),
        ("fixed", {"delay": -1.0}, "delay"),
    ],
)
def test_policy_from_config_refuses_bad_configuration(
    kind: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        policy_from_config(kind, **params)


def test_policy_table_picks_per_class_then_default() -> None:
    default = LogarithmicPolicy()
    slow = FixedPolicy(delay=30.0)
    source = {"http_429": slow}
    table = PolicyTable(default=default, by_error_class=source)
    source["timeout"] = slow  # the table took a copy
    assert table.for_class("http_429") is slow
    assert table.for_class("timeout") is default
    with pytest.raises(TypeError):
        table.by_error_class["x"] = slow  # type: ignore[index]


def test_policy_table_from_plain_config() -> None:
    table = PolicyTable.from_config(
        {"kind": "logarithmic", "base_delay": 1.0, "max_delay": 60.0},
        {"http_429": {"kind": "fixed", "delay": 10.0}},
    )
    assert table.default == LogarithmicPolicy(base_delay=1.0, max_delay=60.0)
    assert table.for_class("http_429") == FixedPolicy(delay=10.0)


# -- properties -------------------------------------------------------------------------

delays = st.floats(min_value=0.001, max_value=1000.0)
jitters = st.floats(min_value=0.0, max_value=0.99)


@st.composite
def curve_policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(delays)
    cap = base * draw(st.floats(min_value=1.0, max_value=1000.0))
    kind = draw(st.sampled_from(["logarithmic", "exponential", "fixed"]))
    if kind == "logarithmic":
        return LogarithmicPolicy(base_delay=base, max_delay=cap, jitter=0.0, max_attempts=BIG)
    if kind == "exponential":
        factor = draw(st.floats(min_value=1.0, max_value=10.0))
        return ExponentialPolicy(
            base_delay=base, factor=factor, max_delay=cap, jitter=0.0, max_attempts=BIG
        )
    return FixedPolicy(delay=base, jitter=0.0, max_attempts=BIG)


@given(curve_policies(), st.integers(min_value=1, max_value=10**6))
def test_curves_never_decrease_and_stay_bounded(policy: RetryPolicy, attempt: int) -> None:
    now = policy.next_delay(attempt, RNG)
    later = policy.next_delay(attempt + 1, RNG)
    assert now is not None and later is not None
    assert later >= now
    cap = getattr(policy, "max_delay", getattr(policy, "delay", None))
    assert cap is not None
    assert 0 < now <= cap


@given(
    delays,
    jitters,
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=0, max_value=2**32),
)
def test_jitter_stays_within_its_bounds(
    base: float, jitter: float, attempt: int, seed: int
) -> None:
    policy = LogarithmicPolicy(
        base_delay=base, max_delay=base * 10, jitter=jitter, max_attempts=BIG
    )
    plain = LogarithmicPolicy(base_delay=base, max_delay=base * 10, jitter=0.0, max_attempts=BIG)
    centre = plain.next_delay(attempt, RNG)
    delay = policy.next_delay(attempt, random.Random(seed))
    assert centre is not None and delay is not None
    assert centre * (1 - jitter) - 1e-9 <= delay <= centre * (1 + jitter) + 1e-9


@given(
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=100),
    st.one_of(st.none(), delays),
)
def test_gives_up_exactly_at_max_attempts(
    max_attempts: int, attempt: int, retry_after: float | None
) -> None:
    policy = LogarithmicPolicy(max_attempts=max_attempts)
    delay = policy.next_delay(attempt, random.Random(0), retry_after)
    assert (delay is None) is (attempt >= max_attempts)
    if delay is not None and retry_after is not None:
        assert delay >= retry_after
