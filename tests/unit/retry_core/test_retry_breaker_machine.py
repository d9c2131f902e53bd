"""The breaker's state machine, without I/O: windows, thresholds, probes, overrides.

`BreakerMachine` is what every instance applies to the shared row when it syncs, so these
tests pin down the decisions themselves; the integration tests pin down the sharing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retry.breaker_machine import Admission, BreakerConfig, BreakerMachine, BreakerState

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
CONFIG = BreakerConfig(
    window_seconds=10,
    min_calls=4,
    failure_rate_threshold=0.5,
    open_seconds=5,
    half_open_permits=2,
    probe_timeout_seconds=30,
)
T0 = 1_700_000_000.0


@dataclass
class Driver:
    """Drives a machine through a script of steps at a moving time."""

    machine: BreakerMachine
    now: float = T0

    def run(self, step: str) -> object:
        verb, _, arg = step.partition(" ")
        if verb == "ok":
            for _ in range(int(arg or 1)):
                self.machine.record(True, self.now)
        elif verb == "fail":
            for _ in range(int(arg or 1)):
                self.machine.record(False, self.now)
        elif verb == "wait":
            self.now += float(arg)
        elif verb == "allow":
            return self.machine.allow(self.now).value
        elif verb == "probe":
            self.machine.probe_result(arg == "ok", self.now)
        elif verb == "release":
            self.machine.release_permit()
        elif verb == "force":
            target = None if arg == "none" else BreakerState(arg)
            self.machine.force(target, self.now, f"forced {arg} by test")
        else:
            raise AssertionError(f"unknown step {step!r}")
        return None


def drive(*steps: str, config: BreakerConfig = CONFIG) -> tuple[Driver, list[object]]:
    driver = Driver(BreakerMachine(config))
    return driver, [driver.run(step) for step in steps]


@pytest.mark.parametrize(
    ("steps", "state"),
    [
        (["fail 3"], CLOSED),  # below min_calls: no verdict, however bad
        (["fail 4"], OPEN),
        (["ok 2", "fail 2"], OPEN),  # exactly at the threshold opens
        (["ok 3", "fail 1"], CLOSED),
        (["ok 10", "fail 9"], CLOSED),  # 9/19 < 0.5
        (["ok 10", "fail 10"], OPEN),
        (["fail 3", "wait 10", "fail 1"], CLOSED),  # the old failures slid out
        (["fail 3", "wait 9", "fail 1"], OPEN),  # ...not yet: 9 s is inside a 10 s window
        (["fail 4", "wait 4.9", "allow"], OPEN),
        (["fail 4", "wait 5", "allow"], HALF_OPEN),  # time alone moves it on
        (["fail 4", "wait 5", "allow", "probe ok"], HALF_OPEN),
        (["fail 4", "wait 5", "allow", "allow", "probe ok", "probe ok"], CLOSED),
        (["fail 4", "wait 5", "allow", "allow", "probe ok", "probe fail"], OPEN),
        (["fail 4", "ok 100"], OPEN),  # outcomes while open are dropped
        (["force OPEN"], OPEN),
        (["force OPEN", "wait 60", "allow"], OPEN),  # forced open never probes
        (["fail 4", "force CLOSED"], CLOSED),
        (["force CLOSED", "fail 50"], CLOSED),  # forced closed ignores the window
        (["force CLOSED", "fail 50", "force none", "fail 1"], OPEN),
        (["fail 4", "force OPEN", "force none", "wait 5", "allow"], HALF_OPEN),
    ],
)
def test_transitions(steps: list[str], state: BreakerState) -> None:
    driver, _ = drive(*steps)
    assert driver.machine.state is state


def test_half_open_hands_out_exactly_the_permits() -> None:
    _, admissions = drive("fail 4", "wait 5", "allow", "allow", "allow", "allow")
    assert admissions[2:] == ["PROBE", "PROBE", "REFUSED", "REFUSED"]


def test_closed_and_forced_closed_allow_without_probing() -> None:
    assert drive("allow")[1] == ["ALLOWED"]
    assert drive("fail 4", "force CLOSED", "allow")[1][-1] == "ALLOWED"


def test_probe_failure_restarts_the_open_period_but_not_the_episode() -> None:
    driver, _ = drive("fail 4", "wait 5", "allow", "wait 1", "probe fail")
    machine = driver.machine
    assert machine.opened_at == T0 + 6
    assert machine.episode_started_at == T0
    assert machine.seconds_unhealthy(T0 + 8) == 8
    driver.run("wait 5")
    assert driver.run("allow") == "PROBE"  # a new half-open round with fresh permits


def test_closing_starts_a_fresh_window() -> None:
    driver, _ = drive("fail 4", "wait 5", "allow", "allow", "probe ok", "probe ok", "fail 3")
    assert driver.machine.state is CLOSED
    assert driver.machine.counts(driver.now) == (3, 3)
    assert driver.machine.seconds_unhealthy(driver.now) == 0


def test_lost_probes_are_issued_again_after_the_probe_timeout() -> None:
    driver, admissions = drive("fail 4", "wait 5", "allow", "allow", "allow", "wait 29", "allow")
    assert admissions[-1] == "REFUSED"
    driver.run("wait 1")
    assert driver.run("allow") == "PROBE"


def test_a_released_permit_can_be_taken_again() -> None:
    _, admissions = drive("fail 4", "wait 5", "allow", "allow", "allow", "release", "allow")
    assert admissions[2:] == ["PROBE", "PROBE", "REFUSED", None, "PROBE"]


def test_release_never_hands_back_a_permit_whose_probe_succeeded() -> None:
    driver, _ = drive("fail 4", "wait 5", "allow", "probe ok", "release", "release")
    assert driver.machine.permits_taken == 1
    assert drive("release")[0].machine.permits_taken == 0  # CLOSED: nothing to give back


def test_late_probe_results_change_nothing() -> None:
    driver, _ = drive("fail 4", "wait 5", "allow", "allow", "probe fail", "probe ok", "probe ok")
    assert driver.machine.state is OPEN


def test_changes_say_what_happened_and_why() -> None:
    driver, _ = drive("fail 4", "wait 5", "allow", "probe fail")
    assert [(c.from_state, c.to_state) for c in driver.machine.changes] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
    ]
    assert "failure rate 1.00 >= 0.5 over 4 calls" in driver.machine.changes[0].reason
    assert driver.machine.changes[2].reason == "half-open probe failed"


def test_the_window_is_bounded_buckets() -> None:
    driver = Driver(BreakerMachine(CONFIG))
    for _ in range(1000):
        driver.run("ok")
        driver.run("wait 0.25")
    assert len(driver.machine.buckets) <= CONFIG.buckets
    # 4 calls per second over a 10 s window, give or take the bucket being filled now.
    assert 36 <= driver.machine.counts(driver.now)[0] <= 40


def test_row_round_trip() -> None:
    driver, _ = drive("ok 3", "fail 1", "wait 2", "fail 1", "force CLOSED")
    row = driver.machine.to_row()
    again = BreakerMachine.from_row({**row, "version": 3}, CONFIG)
    assert again.to_row() == row
    assert again.counts(driver.now) == (5, 2)


def test_buckets_of_another_width_are_dropped() -> None:
    driver, _ = drive("fail 3")
    row = driver.machine.to_row()
    other = BreakerConfig(window_seconds=10, bucket_seconds=0.5, min_calls=4)
    assert BreakerMachine.from_row(row, other).buckets == {}


def test_a_fresh_row_with_the_column_defaults_reads_as_closed() -> None:
    row = {
        "state": "CLOSED",
        "opened_at": None,
        "window": [],  # the column's server default
        "half_open_permits": 0,
        "half_open_successes": 0,
        "forced": None,
    }
    machine = BreakerMachine.from_row(row, CONFIG)
    assert machine.state is CLOSED
    assert machine.buckets == {}


@pytest.mark.parametrize(
    "params",
    [
        {"window_seconds": 0},
        {"open_seconds": -1},
        {"sync_interval_seconds": 0},
        {"min_calls": 0},
        {"half_open_permits": 0},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"bucket_seconds": 20},
        {"window_seconds": 3600, "bucket_seconds": 0.5},
        {"probe_timeout_seconds": 0},
    ],
)
def test_bad_config_is_refused(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**params)  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------------

steps = st.one_of(
    st.tuples(st.just("record"), st.booleans()),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=12.0)),
    st.tuples(st.just("allow"), st.just(True)),
    st.tuples(st.just("probe"), st.booleans()),
)
configs = st.builds(
    BreakerConfig,
    window_seconds=st.floats(min_value=1.0, max_value=30.0),
    min_calls=st.integers(min_value=1, max_value=10),
    failure_rate_threshold=st.floats(min_value=0.05, max_value=1.0),
    open_seconds=st.floats(min_value=0.5, max_value=10.0),
    half_open_permits=st.integers(min_value=1, max_value=5),
    # Long enough that no permit is re-issued in these runs: the bound is per round.
    probe_timeout_seconds=st.just(1e9),
)


@settings(max_examples=300, deadline=None)
@given(configs, st.lists(steps, max_size=200))
def test_state_machine_invariants(config: BreakerConfig, script: list[tuple[str, object]]) -> None:
    machine = BreakerMachine(config)
    now = T0
    outstanding = 0  # probes let through whose result is not in yet
    probes_this_round = 0
    for verb, arg in script:
        before = machine.state
        calls_before, failures_before = machine.counts(now)
        if verb == "record":
            assert isinstance(arg, bool)
            machine.record(arg, now)
            if before is CLOSED and machine.state is OPEN:
                # OPEN only on evidence: at least min_calls, at least the threshold.
                calls, failures = calls_before + 1, failures_before + (not arg)
                assert calls >= config.min_calls
                assert failures / calls >= config.failure_rate_threshold
        elif verb == "wait":
            assert isinstance(arg, float)
            now += arg
        elif verb == "allow":
            admission = machine.allow(now)
            if machine.state is HALF_OPEN and before is not HALF_OPEN:
                probes_this_round = 0
            if admission is Admission.PROBE:
                outstanding += 1
                probes_this_round += 1
            assert (admission is Admission.ALLOWED) == (machine.state is CLOSED)
        elif verb == "probe" and outstanding:
            outstanding -= 1
            machine.probe_result(bool(arg), now)
        if machine.state is not HALF_OPEN:
            outstanding = 0
            probes_this_round = 0
        assert machine.state in (CLOSED, HALF_OPEN, OPEN)
        assert probes_this_round <= config.half_open_permits
        assert machine.permits_taken <= config.half_open_permits
        assert machine.probe_successes <= machine.permits_taken
        assert len(machine.buckets) <= config.buckets
        if machine.state is OPEN:
            assert machine.opened_at is not None and machine.opened_at <= now
        assert (machine.state is CLOSED) == (machine.seconds_unhealthy(now + 1) == 0)
