"""Fault configuration and the seeded injector that turns it into per-call decisions.

The configuration is a validated pydantic model (it is what ``PUT /admin/faults`` accepts);
the :class:`FaultInjector` is plain code with an injected clock and ``random.Random``, so the
same seed and the same call order always give the same sequence of decisions.

Per call, with the knobs active at that moment (base, or the current scenario phase):

1. ``outage`` → 503 at once: no latency, no random draw.
2. ``latency`` is sampled (fixed milliseconds or a distribution) and applies to everything else.
3. One uniform draw ``r`` picks at most one outcome, so the rates are exact probabilities:
   ``r < failure_rate`` → a status from ``status_codes`` (429 carries ``Retry-After``);
   then ``terminal_rate`` → 422 "rejected by warehouse";
   then ``timeout_rate`` → the call *is applied*, and the response is held back for
   ``timeout_delay_seconds`` so the client times out. That is the ambiguous failure that
   idempotency keys exist for.

A scenario is a list of phases; each phase overrides only the knobs it sets, and after the
last phase the base knobs apply again.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from services.warehouse_mock.latency import STRICT_MODEL, Latency

# Generous caps that still keep a fuzzer (or a typo) from parking requests for hours.
MAX_TIMEOUT_DELAY_SECONDS = 600.0
MAX_PHASE_SECONDS = 86_400.0
MAX_PHASES = 50

Clock = Callable[[], float]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
ErrorStatus = Annotated[int, Field(ge=400, le=599)]
StatusCodes = Annotated[list[ErrorStatus], Field(min_length=1, max_length=20)]
RetryAfter = Annotated[int, Field(ge=0, le=3600)]
TimeoutDelay = Annotated[float, Field(gt=0.0, le=MAX_TIMEOUT_DELAY_SECONDS)]


def _check_rate_sum(knobs: FaultKnobs, where: str) -> None:
    total = knobs.failure_rate + knobs.terminal_rate + knobs.timeout_rate
    if total > 1.0 + 1e-9:
        raise ValueError(
            f"failure_rate + terminal_rate + timeout_rate must not exceed 1 {where}(got {total:g})"
        )


class FaultKnobs(BaseModel):
    """The fault knobs in effect at one moment."""

    model_config = STRICT_MODEL
    failure_rate: Rate = 0.0
    status_codes: StatusCodes = Field(default_factory=lambda: [500, 502, 503])
    retry_after_seconds: RetryAfter = 1
    terminal_rate: Rate = 0.0
    timeout_rate: Rate = 0.0
    timeout_delay_seconds: TimeoutDelay = 30.0
    latency: Latency | None = None
    outage: bool = False

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultKnobs:
        _check_rate_sum(self, "")
        return self


class ScenarioPhase(BaseModel):
    """One timed phase. Knobs left out (or null) keep their base value."""

    model_config = STRICT_MODEL
    duration_seconds: Annotated[float, Field(gt=0.0, le=MAX_PHASE_SECONDS)]
    failure_rate: Rate | None = None
    status_codes: StatusCodes | None = None
    retry_after_seconds: RetryAfter | None = None
    terminal_rate: Rate | None = None
    timeout_rate: Rate | None = None
    timeout_delay_seconds: TimeoutDelay | None = None
    latency: Latency | None = None
    outage: bool | None = None

    def apply_to(self, base: FaultKnobs) -> FaultKnobs:
        overrides: dict[str, Any] = {
            name: value
            for name, value in self.model_dump(exclude={"duration_seconds"}).items()
            if value is not None
        }
        # Re-validate the merge, so the rate-sum rule also holds inside the phase.
        return FaultKnobs.model_validate({**base.model_dump(), **overrides}, strict=False)


class FaultConfig(FaultKnobs):
    """What ``PUT /admin/faults`` takes: base knobs plus an optional timed scenario."""

    scenario: Annotated[list[ScenarioPhase], Field(max_length=MAX_PHASES)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _phases_fit(self) -> FaultConfig:
        base = self.knobs()
        for index, phase in enumerate(self.scenario):
            try:
                phase.apply_to(base)
            except ValidationError as exc:
                reasons = "; ".join(str(error["msg"]) for error in exc.errors())
                raise ValueError(f"scenario phase {index}: {reasons}") from exc
        return self

    def knobs(self) -> FaultKnobs:
        return FaultKnobs.model_validate(self.model_dump(exclude={"scenario"}), strict=False)


class ScenarioProgress(BaseModel):
    running: bool
    phase_index: int | None = Field(description="0-based index of the current phase")
    phase_count: int
    elapsed_seconds: float
    phase_remaining_seconds: float | None
    remaining_seconds: float


class FaultState(BaseModel):
    config: FaultConfig = Field(description="The configuration last PUT (or the start one)")
    active: FaultKnobs = Field(description="The knobs in effect right now")
    scenario: ScenarioProgress | None = Field(description="null when no scenario is configured")


class FaultKind(enum.StrEnum):
    OUTAGE = "outage"
    FAILURE = "failure"
    TERMINAL = "terminal"
    TIMEOUT = "timeout"
    LATENCY = "latency"


TERMINAL_STATUS = 422


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one call. ``status`` set means: answer with it, do not apply the call."""

    kind: FaultKind | None = None
    status: int | None = None
    retry_after_seconds: int | None = None
    latency_seconds: float = 0.0
    delay_after_seconds: float = 0.0

    @property
    def kinds(self) -> tuple[FaultKind, ...]:
        """Every kind this decision injects (latency counts on its own)."""
        found = [self.kind] if self.kind is not None else []
        if self.latency_seconds > 0:
            found.append(FaultKind.LATENCY)
        return tuple(found)


NO_FAULT = FaultDecision()


class FaultInjector:
    def __init__(self, config: FaultConfig, *, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self.configure(config)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration; a scenario in it starts now."""
        self._config = config
        self._base = config.knobs()
        self._phases = [
            (phase.duration_seconds, phase.apply_to(self._base)) for phase in config.scenario
        ]
        self._started_at = self._clock()

    def _current(self) -> tuple[FaultKnobs, ScenarioProgress | None]:
        if not self._phases:
            return self._base, None
        elapsed = max(0.0, self._clock() - self._started_at)
        total = sum(duration for duration, _ in self._phases)
        phase_end = 0.0
        for index, (duration, knobs) in enumerate(self._phases):
            phase_end += duration
            if elapsed < phase_end:
                return knobs, ScenarioProgress(
                    running=True,
                    phase_index=index,
                    phase_count=len(self._phases),
                    elapsed_seconds=elapsed,
                    phase_remaining_seconds=phase_end - elapsed,
                    remaining_seconds=total - elapsed,
                )
        return self._base, ScenarioProgress(
            running=False,
            phase_index=None,
            phase_count=len(self._phases),
            elapsed_seconds=elapsed,
            phase_remaining_seconds=None,
            remaining_seconds=0.0,
        )

    def state(self) -> FaultState:
        active, progress = self._current()
        return FaultState(config=self._config, active=active, scenario=progress)

    def decide(self) -> FaultDecision:
        knobs, _ = self._current()
        if knobs.outage:
            return FaultDecision(kind=FaultKind.OUTAGE, status=503)
        latency_seconds = 0.0
        if knobs.latency is not None:
            ms = (
                knobs.latency
                if isinstance(knobs.latency, float)
                else knobs.latency.sample_ms(self._rng)
            )
            latency_seconds = ms / 1000.0
        draw = self._rng.random()
        threshold = knobs.failure_rate
        if draw < threshold:
            status = self._rng.choice(knobs.status_codes)
            return FaultDecision(
                kind=FaultKind.FAILURE,
                status=status,
                retry_after_seconds=knobs.retry_after_seconds if status == 429 else None,
                latency_seconds=latency_seconds,
            )
        threshold += knobs.terminal_rate
        if draw < threshold:
            return FaultDecision(
                kind=FaultKind.TERMINAL, status=TERMINAL_STATUS, latency_seconds=latency_seconds
            )
        threshold += knobs.timeout_rate
        if draw < threshold:
            return FaultDecision(
                kind=FaultKind.TIMEOUT,
                latency_seconds=latency_seconds,
                delay_after_seconds=knobs.timeout_delay_seconds,
            )
        return FaultDecision(latency_seconds=latency_seconds)
