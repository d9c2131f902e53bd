"""Rate pacing maths and the two bounds (count and time) every run has."""

from __future__ import annotations

import pytest

from local.load import ConfigError
from local.load.runner import MAX_COUNT, MAX_SECONDS, Budget, due_offset, pacing_delay


@pytest.mark.parametrize(
    ("index", "rate", "expected"),
    [(0, 100.0, 0.0), (1, 100.0, 0.01), (150, 300.0, 0.5), (1500, 1500.0, 1.0)],
)
def test_due_offset(index: int, rate: float, expected: float) -> None:
    assert due_offset(index, rate) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("index", "rate", "elapsed", "expected"),
    [
        (10, 100.0, 0.0, 0.1),  # early: wait for the slot
        (10, 100.0, 0.04, 0.06),
        (10, 100.0, 0.1, 0.0),  # exactly due
        (10, 100.0, 0.5, 0.0),  # overdue: send now, never a negative wait
    ],
)
def test_pacing_delay(index: int, rate: float, elapsed: float, expected: float) -> None:
    assert pacing_delay(index, rate, elapsed) == pytest.approx(expected)


def test_pacing_keeps_the_rate_over_a_second() -> None:
    # Sending each unit when its delay hits 0 puts exactly `rate` units in the first second.
    rate = 300.0
    sent_in_first_second = sum(1 for i in range(1000) if due_offset(i, rate) < 1.0)
    assert sent_in_first_second == 300


@pytest.mark.parametrize(
    ("count", "seconds", "rate", "expected"),
    [
        (100, None, None, Budget(100, MAX_SECONDS)),
        (None, 10.0, None, Budget(MAX_COUNT, 10.0)),
        (None, 10.0, 300.0, Budget(3000, 10.0)),
        (600, None, 300.0, Budget(600, 8.0)),  # 2 s of work, x1.5, +5 s slack
        (50, 2.0, 300.0, Budget(50, 2.0)),
        (None, 3000.0, 1000.0, Budget(MAX_COUNT, 3000.0)),
    ],
)
def test_budget_fills_in_the_missing_bound(
    count: int | None, seconds: float | None, rate: float | None, expected: Budget
) -> None:
    assert Budget.of(count, seconds, rate) == expected


@pytest.mark.parametrize(
    ("count", "seconds"),
    [(None, None), (0, 1.0), (MAX_COUNT + 1, 1.0), (1, 0.0), (1, MAX_SECONDS + 1)],
)
def test_budget_refuses_unbounded_or_silly_runs(count: int | None, seconds: float | None) -> None:
    with pytest.raises(ConfigError):
        if count is None or seconds is None:
            Budget.of(count, seconds, None)
        else:
            Budget(count, seconds)
