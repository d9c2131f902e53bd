"""Latency distributions for injected delays, sampled from an injected ``random.Random``.

A fault configuration's ``latency`` is either a bare number (fixed milliseconds) or one of
these, told apart by ``kind``. Every sample lies in ``[0, MAX_LATENCY_MS]``.
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LATENCY_MS = 60_000.0

# Strict: the HTTP schema says "number"/"boolean", so "0.5" or 1-for-true must be rejected,
# not silently coerced (a schema-driven fuzzer reports coercion as accepting bad input).
STRICT_MODEL = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

LatencyMs = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_MS)]


class FixedLatency(BaseModel):
    model_config = STRICT_MODEL
    kind: Literal["fixed"]
    ms: LatencyMs

    def sample_ms(self, rng: random.Random) -> float:
        return self.ms


class UniformLatency(BaseModel):
    model_config = STRICT_MODEL
    kind: Literal["uniform"]
    low_ms: LatencyMs
    high_ms: LatencyMs

    @model_validator(mode="after")
    def _ordered(self) -> UniformLatency:
        if self.low_ms > self.high_ms:
            raise ValueError("low_ms must not exceed high_ms")
        return self

    def sample_ms(self, rng: random.Random) -> float:
        return rng.uniform(self.low_ms, self.high_ms)


class NormalLatency(BaseModel):
    model_config = STRICT_MODEL
    kind: Literal["normal"]
    mean_ms: LatencyMs
    stddev_ms: LatencyMs

    def sample_ms(self, rng: random.Random) -> float:
        # A negative delay means nothing; clamping keeps every sample a real latency.
        return _clamp(rng.gauss(self.mean_ms, self.stddev_ms))


class LognormalLatency(BaseModel):
    """Long-tailed latency, the usual shape of a real service: most calls near the median."""

    model_config = STRICT_MODEL
    kind: Literal["lognormal"]
    median_ms: Annotated[float, Field(gt=0.0, le=MAX_LATENCY_MS)]
    sigma: Annotated[float, Field(ge=0.0, le=5.0)]

    def sample_ms(self, rng: random.Random) -> float:
        return _clamp(rng.lognormvariate(math.log(self.median_ms), self.sigma))


LatencyDistribution = Annotated[
    FixedLatency | UniformLatency | NormalLatency | LognormalLatency,
    Field(discriminator="kind"),
]
# A bare number is shorthand for a fixed latency in milliseconds.
Latency = LatencyMs | LatencyDistribution


def _clamp(ms: float) -> float:
    return min(max(ms, 0.0), MAX_LATENCY_MS)
