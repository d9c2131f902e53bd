"""Fault configuration validation and the seeded injector's decisions."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.warehouse_mock.faults import FaultConfig, FaultDecision, FaultInjector, FaultKind
from services.warehouse_mock.latency import (
    MAX_LATENCY_MS,
    FixedLatency,
    LognormalLatency,
    NormalLatency,
    UniformLatency,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def injector(
    config: dict[str, Any], *, seed: int = 0, clock: Callable[[], float] = lambda: 0.0
) -> FaultInjector:
    return FaultInjector(FaultConfig.model_validate(config), clock=clock, rng=random.Random(seed))


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"failure_rate": -0.1}, "greater than or equal to 0"),
        ({"failure_rate": 1.5}, "less than or equal to 1"),
        ({"terminal_rate": 2}, "less than or equal to 1"),
        ({"timeout_rate": -1}, "greater than or equal to 0"),
        ({"failure_rate": "0.5"}, "valid number"),
        ({"status_codes": [399]}, "greater than or equal to 400"),
        ({"status_codes": [600]}, "less than or equal to 599"),
        ({"status_codes": []}, "at least 1 item"),
        ({"status_codes": [503.5]}, "valid integer"),
        ({"retry_after_seconds": -1}, "greater than or equal to 0"),
        ({"timeout_delay_seconds": 0}, "greater than 0"),
        ({"latency": -5}, "greater than or equal to 0"),
        ({"latency": MAX_LATENCY_MS + 1}, "less than or equal to"),
        ({"latency": {"kind": "uniform", "low_ms": 10, "high_ms": 5}}, "low_ms must not exceed"),
        ({"latency": {"kind": "gaussian", "mean_ms": 5}}, "does not match any of the expected"),
        ({"latency": {"kind": "fixed"}}, "Field required"),
        ({"latency": {"kind": "lognormal", "median_ms": 0, "sigma": 1}}, "greater than 0"),
        ({"outage": "yes"}, "valid boolean"),
        ({"outage": 1}, "valid boolean"),
        ({"failure_rate": 0.6, "terminal_rate": 0.3, "timeout_rate": 0.2}, "must not exceed 1"),
        ({"nonsense": True}, "Extra inputs are not permitted"),
        ({"scenario": [{"duration_seconds": 0, "outage": True}]}, "greater than 0"),
        ({"scenario": [{"outage": True}]}, "Field required"),
        ({"scenario": [{"duration_seconds": 5, "failure_rate": 2}]}, "less than or equal to 1"),
        ({"scenario": [{"duration_seconds": 5, "bogus": 1}]}, "Extra inputs are not permitted"),
        (
            # Each rate is fine alone; merged onto the base the phase would exceed 1.
            {"terminal_rate": 0.5, "scenario": [{"duration_seconds": 5, "failure_rate": 0.6}]},
            "scenario phase 0",
        ),
        ({"scenario": [{"duration_seconds": 1}] * 51}, "at most 50 items"),
    ],
)
def test_invalid_fault_config_is_rejected_with_a_reason(
    config: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        FaultConfig.model_validate(config)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"failure_rate": 1, "status_codes": [429]},
        {"failure_rate": 0.5, "terminal_rate": 0.25, "timeout_rate": 0.25},
        {"latency": 120},
        {"latency": {"kind": "normal", "mean_ms": 100, "stddev_ms": 30}},
        {"outage": True},
        {
            "scenario": [
                {"duration_seconds": 30, "outage": True},
                {"duration_seconds": 60, "failure_rate": 0.5},
            ]
        },
    ],
)
def test_valid_fault_config_round_trips(config: dict[str, Any]) -> None:
    parsed = FaultConfig.model_validate(config)
    assert FaultConfig.model_validate(parsed.model_dump()) == parsed


def decisions(inj: FaultInjector, n: int) -> list[FaultDecision]:
    return [inj.decide() for _ in range(n)]


MIXED = {
    "failure_rate": 0.3,
    "status_codes": [429, 500, 503],
    "terminal_rate": 0.1,
    "timeout_rate": 0.1,
    "latency": {"kind": "lognormal", "median_ms": 50, "sigma": 0.5},
}


def test_same_seed_gives_the_same_decisions() -> None:
    first = decisions(injector(MIXED, seed=42), 500)
    second = decisions(injector(MIXED, seed=42), 500)
    assert first == second
    assert len({d.kind for d in first}) == 4  # failures, terminals, timeouts and clean calls


def test_a_different_seed_gives_different_decisions() -> None:
    assert decisions(injector(MIXED, seed=1), 200) != decisions(injector(MIXED, seed=2), 200)


def test_rates_are_honoured_as_probabilities() -> None:
    kinds = Counter(d.kind for d in decisions(injector(MIXED, seed=7), 20_000))
    assert kinds[FaultKind.FAILURE] / 20_000 == pytest.approx(0.3, abs=0.02)
    assert kinds[FaultKind.TERMINAL] / 20_000 == pytest.approx(0.1, abs=0.02)
    assert kinds[FaultKind.TIMEOUT] / 20_000 == pytest.approx(0.1, abs=0.02)
    assert kinds[None] / 20_000 == pytest.approx(0.5, abs=0.02)


def test_failures_use_only_the_configured_codes_and_429_carries_retry_after() -> None:
    inj = injector({"failure_rate": 1, "status_codes": [429, 502], "retry_after_seconds": 7})
    seen = decisions(inj, 300)
    assert {d.status for d in seen} == {429, 502}
    for decision in seen:
        assert decision.kind is FaultKind.FAILURE
        assert decision.retry_after_seconds == (7 if decision.status == 429 else None)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, FaultDecision()),
        ({"outage": True, "latency": 500}, FaultDecision(kind=FaultKind.OUTAGE, status=503)),
        ({"terminal_rate": 1}, FaultDecision(kind=FaultKind.TERMINAL, status=422)),
        (
            {"timeout_rate": 1, "timeout_delay_seconds": 12},
            FaultDecision(kind=FaultKind.TIMEOUT, delay_after_seconds=12),
        ),
        ({"latency": 250}, FaultDecision(latency_seconds=0.25)),
        (
            {"latency": {"kind": "fixed", "ms": 40}, "terminal_rate": 1},
            FaultDecision(kind=FaultKind.TERMINAL, status=422, latency_seconds=0.04),
        ),
    ],
)
def test_certain_configs_decide_exactly(config: dict[str, Any], expected: FaultDecision) -> None:
    assert decisions(injector(config), 20) == [expected] * 20


@pytest.mark.parametrize(
    ("distribution", "low", "high"),
    [
        (FixedLatency(kind="fixed", ms=75), 75, 75),
        (UniformLatency(kind="uniform", low_ms=20, high_ms=80), 20, 80),
        (NormalLatency(kind="normal", mean_ms=10, stddev_ms=50), 0, MAX_LATENCY_MS),
        (LognormalLatency(kind="lognormal", median_ms=100, sigma=4), 0, MAX_LATENCY_MS),
    ],
)
def test_latency_samples_stay_within_bounds(distribution: Any, low: float, high: float) -> None:
    rng = random.Random(3)
    samples = [distribution.sample_ms(rng) for _ in range(5_000)]
    assert min(samples) >= low
    assert max(samples) <= high


def test_normal_latency_is_clamped_at_zero_not_dropped() -> None:
    rng = random.Random(3)
    normal = NormalLatency(kind="normal", mean_ms=10, stddev_ms=50)
    samples = [normal.sample_ms(rng) for _ in range(2_000)]
    assert samples.count(0.0) > 0  # negative draws became 0 ms
    assert sum(samples) / len(samples) > 10  # and the clamp lifted the mean


def test_lognormal_latency_centres_on_its_median() -> None:
    rng = random.Random(11)
    lognormal = LognormalLatency(kind="lognormal", median_ms=200, sigma=0.8)
    samples = sorted(lognormal.sample_ms(rng) for _ in range(4_001))
    assert samples[2_000] == pytest.approx(200, rel=0.1)


SCENARIO = {
    "latency": 5,
    "scenario": [
        {"duration_seconds": 30, "outage": True},
        {"duration_seconds": 60, "failure_rate": 0.5},
    ],
}


@pytest.mark.parametrize(
    ("elapsed", "phase", "outage", "failure_rate"),
    [
        (0, 0, True, 0.0),
        (29.9, 0, True, 0.0),
        (30, 1, False, 0.5),
        (89.9, 1, False, 0.5),
        (90, None, False, 0.0),
        (10_000, None, False, 0.0),
    ],
)
def test_scenario_phases_follow_the_clock(
    elapsed: float, phase: int | None, outage: bool, failure_rate: float
) -> None:
    clock = FakeClock()
    inj = injector(SCENARIO, clock=clock)
    clock.advance(elapsed)
    state = inj.state()
    assert state.scenario is not None
    assert state.scenario.phase_index == phase
    assert state.scenario.running is (phase is not None)
    assert state.scenario.elapsed_seconds == pytest.approx(elapsed)
    assert state.scenario.remaining_seconds == pytest.approx(max(0.0, 90 - elapsed))
    assert state.active.outage is outage
    assert state.active.failure_rate == failure_rate
    # Knobs a phase does not set keep their base value.
    assert state.active.latency == 5


def test_scenario_decisions_change_with_the_phase() -> None:
    clock = FakeClock()
    inj = injector({"scenario": [{"duration_seconds": 30, "outage": True}]}, clock=clock)
    assert inj.decide().kind is FaultKind.OUTAGE
    clock.advance(30)
    assert inj.decide() == FaultDecision()


def test_configure_restarts_the_scenario_from_now() -> None:
    clock = FakeClock()
    inj = injector(SCENARIO, clock=clock)
    clock.advance(100)
    inj.configure(FaultConfig.model_validate(SCENARIO))
    state = inj.state()
    assert state.scenario is not None
    assert state.scenario.phase_index == 0


def test_without_scenario_there_is_no_progress() -> None:
    assert injector({"failure_rate": 0.2}).state().scenario is None


rates = st.floats(min_value=0, max_value=1 / 3)


@given(
    failure_rate=rates,
    terminal_rate=rates,
    timeout_rate=rates,
    codes=st.lists(st.integers(400, 599), min_size=1, max_size=5),
    seed=st.integers(),
)
def test_every_decision_is_one_the_config_allows(
    failure_rate: float, terminal_rate: float, timeout_rate: float, codes: list[int], seed: int
) -> None:
    config = {
        "failure_rate": failure_rate,
        "terminal_rate": terminal_rate,
        "timeout_rate": timeout_rate,
        "status_codes": codes,
        "latency": {"kind": "uniform", "low_ms": 0, "high_ms": 100},
    }
    for decision in decisions(injector(config, seed=seed), 50):
        assert 0 <= decision.latency_seconds <= 0.1
        if decision.kind is FaultKind.FAILURE:
            assert decision.status in codes
        elif decision.kind is FaultKind.TERMINAL:
            assert decision.status == 422
        else:
            assert decision.status is None
