"""Properties of the retry policies and the breaker machine that the table tests can't list.

test_retry_policy.py and test_retry_breaker_machine.py already check single steps (one
attempt's delay, one random script against a few invariants). Here:

- policies, all three kinds: a whole schedule driven the way the processor drives it
  (attempts cap, non-decreasing curve under the cap, jitter band, Retry-After floor,
  reproducible from the seed);
- the breaker: a `RuleBasedStateMachine` that interleaves outcomes, clock advances,
  admissions, probe results (on time and late), permit releases and operator overrides,
  checking after every step that each transition had its cause.
"""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from retry.breaker_machine import Admission, BreakerConfig, BreakerMachine, BreakerState
from retry.policy import ExponentialPolicy, FixedPolicy, LogarithmicPolicy, RetryPolicy

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
T0 = 1_700_000_000.0

# -- policies -------------------------------------------------------------------------------

positive = st.floats(min_value=0.001, max_value=1000.0)
jitters = st.floats(min_value=0.0, max_value=0.99)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(positive)
    cap = base * draw(st.floats(min_value=1.0, max_value=1000.0))
    jitter, attempts = draw(jitters), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["logarithmic", "exponential", "fixed"]))
    if kind == "logarithmic":
        return LogarithmicPolicy(
            base_delay=base, max_delay=cap, jitter=jitter, max_attempts=attempts
        )
    if kind == "exponential":
        factor = draw(st.floats(min_value=1.0, max_value=10.0))
        return ExponentialPolicy(
            base_delay=base, factor=factor, max_delay=cap, jitter=jitter, max_attempts=attempts
        )
    return FixedPolicy(delay=base, jitter=jitter, max_attempts=attempts)


def ceiling(policy: RetryPolicy) -> float:
    return float(getattr(policy, "max_delay", getattr(policy, "delay", math.nan)))


def schedule(
    policy: RetryPolicy, rng: random.Random, retry_after: float | None = None
) -> list[float]:
    """Delays as the processor asks for them: after attempt 1, 2, ... until None."""
    delays: list[float] = []
    attempt = 1
    while (delay := policy.next_delay(attempt, rng, retry_after)) is not None:
        delays.append(delay)
        attempt += 1
        assert attempt <= policy.max_attempts, "the cap did not stop the schedule"
    return delays


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(0, 2**32))
def test_a_schedule_makes_exactly_max_attempts_attempts(policy: RetryPolicy, seed: int) -> None:
    assert len(schedule(policy, random.Random(seed))) == policy.max_attempts - 1


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(0, 2**32))
def test_every_delay_lies_in_the_jitter_band_around_a_rising_capped_curve(
    policy: RetryPolicy, seed: int
) -> None:
    delays = schedule(policy, random.Random(seed))
    curve = [policy.base_delay_for(n) for n in range(1, len(delays) + 1)]
    assert all(a <= b for a, b in itertools.pairwise(curve)), curve
    assert all(0 <= c <= ceiling(policy) for c in curve)
    for delay, centre in zip(delays, curve, strict=True):
        assert math.isfinite(delay)
        low, high = centre * (1 - policy.jitter), centre * (1 + policy.jitter)
        assert low - 1e-9 * centre <= delay <= high + 1e-9 * centre


@settings(max_examples=200, deadline=None)
@given(
    policies(),
    st.integers(0, 2**32),
    st.floats(allow_nan=True, allow_infinity=True) | st.none(),
)
def test_retry_after_is_a_floor_for_every_kind(
    policy: RetryPolicy, seed: int, retry_after: float | None
) -> None:
    plain = schedule(policy, random.Random(seed))
    floored = schedule(policy, random.Random(seed), retry_after)
    assert len(floored) == len(plain)  # Retry-After never adds or removes an attempt
    usable = retry_after is not None and math.isfinite(retry_after) and retry_after > 0
    for before, after in zip(plain, floored, strict=True):
        assert after == (max(before, retry_after) if usable and retry_after else before)


@settings(max_examples=100, deadline=None)
@given(policies(), st.integers(0, 2**32))
def test_a_seed_gives_one_schedule(policy: RetryPolicy, seed: int) -> None:
    assert schedule(policy, random.Random(seed)) == schedule(policy, random.Random(seed))


# -- the breaker ------------------------------------------------------------------------------

configs = st.builds(
    BreakerConfig,
    window_seconds=st.floats(min_value=1.0, max_value=30.0),
    bucket_seconds=st.just(1.0),
    min_calls=st.integers(min_value=1, max_value=8),
    failure_rate_threshold=st.floats(min_value=0.05, max_value=1.0),
    open_seconds=st.floats(min_value=0.5, max_value=10.0),
    half_open_permits=st.integers(min_value=1, max_value=4),
    probe_timeout_seconds=st.floats(min_value=1.0, max_value=20.0),
)


class BreakerRules(RuleBasedStateMachine):
    """One machine, driven at a moving clock; every rule asserts what caused its change."""

    machine: BreakerMachine
    config: BreakerConfig

    @initialize(config=configs)
    def start(self, config: BreakerConfig) -> None:
        self.config = config
        self.machine = BreakerMachine(config)
        self.now = T0
        self.outstanding = 0  # probes handed out whose result is not in yet
        self.round: float | None = None  # half_open_at of the round being counted
        self.net_probes = 0  # probes handed out in this round, minus permits given back

    # -- helpers

    def _note_round(self) -> None:
        """A new half-open round (entered, or lost probes re-issued) resets the count."""
        if self.machine.state is not HALF_OPEN:
            self.round, self.net_probes, self.outstanding = None, 0, 0
        elif self.machine.half_open_at != self.round:
            self.round, self.net_probes = self.machine.half_open_at, 0
            # Re-issued permits replace probes that never reported.
            self.outstanding = 0

    # -- rules

    @rule(success=st.booleans())
    def record(self, success: bool) -> None:
        before = self.machine.state
        calls, failures = self.machine.counts(self.now)
        self.machine.record(success, self.now)
        after = self.machine.state
        if before is CLOSED and after is OPEN:
            calls, failures = calls + 1, failures + (not success)
            assert self.machine.forced is None
            assert calls >= self.config.min_calls
            assert failures / calls >= self.config.failure_rate_threshold
            assert self.machine.opened_at == self.now
        if before is not CLOSED:
            assert after is before  # outcomes outside CLOSED change nothing
        assert not (before is not HALF_OPEN and after is HALF_OPEN)
        self._note_round()

    @rule(count=st.integers(min_value=1, max_value=10))
    def failures(self, count: int) -> None:
        """A burst of failures: an outage, which uniform coin flips rarely produce."""
        for _ in range(count):
            self.record(False)

    @rule(seconds=st.floats(min_value=0.0, max_value=12.0))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.machine.state is OPEN and self.machine.forced is None)
    @rule()
    def wait_out_the_open_period(self) -> None:
        assert self.machine.opened_at is not None
        due = self.machine.opened_at + self.config.open_seconds
        # Epoch seconds near 1.7e9 carry ~2e-7 s of resolution: land on or just past it.
        while due - self.machine.opened_at < self.config.open_seconds:
            due = math.nextafter(due, math.inf)
        self.now = max(self.now, due)

    @rule()
    def allow(self) -> None:
        before = self.machine.state
        opened_at = self.machine.opened_at
        admission = self.machine.allow(self.now)
        after = self.machine.state
        if before is OPEN and after is HALF_OPEN:
            assert opened_at is not None
            assert self.now - opened_at >= self.config.open_seconds
            assert self.machine.forced is None
        if before is OPEN and after is OPEN:
            assert admission is Admission.REFUSED
        assert (admission is Admission.ALLOWED) == (after is CLOSED)
        assert after is before or (before, after) == (OPEN, HALF_OPEN)
        self._note_round()
        if admission is Admission.PROBE:
            assert after is HALF_OPEN
            self.outstanding += 1
            self.net_probes += 1
            assert self.net_probes <= self.config.half_open_permits

    @precondition(lambda self: self.outstanding > 0)
    @rule(success=st.booleans())
    def probe_result(self, success: bool) -> None:
        before = self.machine.state
        successes = self.machine.probe_successes
        self.outstanding -= 1
        self.machine.probe_result(success, self.now)
        after = self.machine.state
        assert before is HALF_OPEN
        if not success:
            assert after is OPEN and self.machine.opened_at == self.now
        elif after is CLOSED:
            assert successes + 1 >= self.config.half_open_permits
            assert self.machine.seconds_unhealthy(self.now + 1) == 0
        else:
            assert after is HALF_OPEN
        self._note_round()

    @precondition(lambda self: self.machine.state is not HALF_OPEN)
    @rule(success=st.booleans())
    def late_probe_result(self, success: bool) -> None:
        """A probe from an earlier round (or another instance's) reports after the fact."""
        before = (self.machine.state, self.machine.opened_at, self.machine.probe_successes)
        self.machine.probe_result(success, self.now)
        assert (self.machine.state, self.machine.opened_at, self.machine.probe_successes) == before

    @precondition(lambda self: self.outstanding > 0)
    @rule()
    def release(self) -> None:
        taken = self.machine.permits_taken
        self.machine.release_permit()
        assert self.machine.permits_taken == taken - 1
        self.outstanding -= 1
        self.net_probes -= 1

    @rule(override=st.sampled_from([OPEN, CLOSED, None]))
    def force(self, override: BreakerState | None) -> None:
        before = self.machine.state
        self.machine.force(override, self.now, "forced by the property test")
        after = self.machine.state
        assert after is (override or before)
        self._note_round()

    # -- invariants

    @invariant()
    def valid_state(self) -> None:
        assert self.machine.state in (CLOSED, HALF_OPEN, OPEN)

    @invariant()
    def permits_are_bounded(self) -> None:
        assert 0 <= self.machine.probe_successes <= self.machine.permits_taken
        assert self.machine.permits_taken <= self.config.half_open_permits
        if self.machine.state is not HALF_OPEN:
            assert self.machine.permits_taken == self.machine.probe_successes == 0

    @invariant()
    def the_window_is_bounded(self) -> None:
        assert len(self.machine.buckets) <= self.config.buckets
        if self.machine.state is not CLOSED:
            assert self.machine.buckets == {}  # the window restarts on closing

    @invariant()
    def times_are_consistent(self) -> None:
        machine = self.machine
        if machine.state is OPEN:
            assert machine.opened_at is not None and machine.opened_at <= self.now
        if machine.state is CLOSED:
            assert machine.opened_at is None and machine.episode_started_at is None
        else:
            assert machine.episode_started_at is not None
            assert machine.episode_started_at <= self.now
            if machine.opened_at is not None:
                assert machine.episode_started_at <= machine.opened_at
        assert (machine.state is CLOSED) == (machine.seconds_unhealthy(self.now + 1) == 0)

    @invariant()
    def overrides_hold(self) -> None:
        if self.machine.forced is not None:
            assert self.machine.state is self.machine.forced


BreakerRules.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_breaker_machine_rules = BreakerRules.TestCase


@settings(max_examples=100, deadline=None)
@given(configs, st.integers(min_value=0, max_value=3))
def test_enough_successful_probes_always_close(config: BreakerConfig, early_waits: int) -> None:
    """From any opening: after open_seconds, permits are there, and all-good probes close."""
    machine = BreakerMachine(config)
    now = T0
    machine.force(OPEN, now, "test")
    machine.force(None, now, "test")
    for _ in range(early_waits):
        now += config.open_seconds / 4 * 0.99
        assert machine.allow(now) is Admission.REFUSED
    now = T0 + config.open_seconds
    if now - T0 < config.open_seconds:
        # Epoch seconds near 1.7e9 carry ~2e-7 s of resolution: step to the next float.
        now = math.nextafter(now, math.inf)
    probes = [machine.allow(now) for _ in range(config.half_open_permits)]
    assert probes == [Admission.PROBE] * config.half_open_permits
    assert machine.allow(now) is Admission.REFUSED
    for _ in probes:
        machine.probe_result(True, now)
    assert machine.state is CLOSED
    assert machine.allow(now) is Admission.ALLOWED
