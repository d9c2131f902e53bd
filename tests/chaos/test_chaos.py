"""Chaos, part 1: a process killed with kill -9 under load, then restarted.

The relay, the scheduler (while it holds leases) and the API in mid-request (clients
retry with the same Idempotency-Key); consumers are in `test_chaos_rebalance.py`. The
scenarios and their audit are in `tests/chaos/scenarios.py`; infrastructure failures are
in `test_chaos_infra.py`, files of their own so that pytest-xdist (`--dist loadfile`)
runs them side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos import scenarios
from tests.chaos.audit import ScenarioResult
from tests.chaos.harness import ChaosStack, Scale

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.parametrize("scenario", scenarios.PROCESS_KILLS, ids=lambda s: s.name)
def test_chaos(
    scenario: scenarios.Scenario,
    chaos_stack: Callable[..., ChaosStack],
    chaos_scale: Scale,
    chaos_results: list[ScenarioResult],
) -> None:
    scenarios.run(scenario, chaos_stack, chaos_scale, chaos_results)
