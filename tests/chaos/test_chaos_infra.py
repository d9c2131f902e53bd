"""Chaos, part 2: infrastructure fails under load, and messages arrive twice.

A broker restart (SIGTERM, then start on the same data), a restart of a private
PostgreSQL, a warehouse outage (shortened in the reduced run, 60 s at full scale), and a partition
replayed from offset 0 while orders flow and again after they are all final.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos import scenarios
from tests.chaos.audit import ScenarioResult
from tests.chaos.harness import ChaosStack, Scale

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.parametrize("scenario", scenarios.INFRASTRUCTURE, ids=lambda s: s.name)
def test_chaos_infra(
    scenario: scenarios.Scenario,
    chaos_stack: Callable[..., ChaosStack],
    chaos_scale: Scale,
    chaos_results: list[ScenarioResult],
) -> None:
    scenarios.run(scenario, chaos_stack, chaos_scale, chaos_results)
