"""Chaos: consumers leaving the group under load and coming back.

kill -9 of a consumer (a second one in the group takes its partitions over once its
session expires, measured), and a consumer frozen with SIGSTOP past its session timeout,
then woken while the survivor works on its events (two members, one event). The
scenarios and their audit are in `tests/chaos/scenarios.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos import scenarios
from tests.chaos.audit import ScenarioResult
from tests.chaos.harness import ChaosStack, Scale

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.parametrize("scenario", scenarios.REBALANCE, ids=lambda s: s.name)
def test_chaos_rebalance(
    scenario: scenarios.Scenario,
    chaos_stack: Callable[..., ChaosStack],
    chaos_scale: Scale,
    chaos_results: list[ScenarioResult],
) -> None:
    scenarios.run(scenario, chaos_stack, chaos_scale, chaos_results)
