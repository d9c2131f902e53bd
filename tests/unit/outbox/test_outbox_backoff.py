"""The relay's backoff: tenacity's exponential wait with jitter, within its bounds."""

from __future__ import annotations

import pytest

from outbox.backoff import Backoff


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (0, 1.0, 1.5),  # treated as the first attempt
        (1, 1.0, 1.5),
        (2, 2.0, 2.5),
        (3, 4.0, 4.5),
        (4, 5.0, 5.0),  # capped
        (50, 5.0, 5.0),
        (10_000, 5.0, 5.0),  # no overflow
    ],
)
def test_delay_grows_exponentially_and_stops_at_the_cap(
    attempt: int, low: float, high: float
) -> None:
    backoff = Backoff(max_seconds=5.0, jitter_seconds=0.5)
    for _ in range(50):
        assert low <= backoff.delay_for(attempt) <= high


def test_consecutive_failures_count_up_and_reset() -> None:
    backoff = Backoff(max_seconds=3.0, jitter_seconds=0.0)
    assert [backoff.next_delay() for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0


def test_jitter_spreads_relays_apart() -> None:
    backoff = Backoff(max_seconds=60.0, jitter_seconds=1.0)
    assert len({round(backoff.delay_for(3), 6) for _ in range(20)}) > 1


@pytest.mark.parametrize(("max_seconds", "jitter"), [(0, 0.5), (-1, 0.5), (5, -0.1)])
def test_nonsense_settings_are_refused(max_seconds: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(max_seconds=max_seconds, jitter_seconds=jitter)
