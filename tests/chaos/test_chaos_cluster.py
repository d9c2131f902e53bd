"""Chaos, part 3: a three-node Apache Kafka cluster loses brokers under load.

kill -9 of the broker that leads the most order partitions (restarted later), and a
rolling restart of all three. Replication factor 3 and min.insync.replicas 2, with the
relay's idempotent acks=all producer: nothing acknowledged may be lost, nothing reserved
twice. Its own file, so pytest-xdist runs it beside the other two halves.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos import scenarios
from tests.chaos.audit import ScenarioResult
from tests.chaos.harness import ChaosStack, Scale

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.parametrize("scenario", scenarios.CLUSTER, ids=lambda s: s.name)
def test_chaos_cluster(
    scenario: scenarios.Scenario,
    chaos_stack: Callable[..., ChaosStack],
    chaos_scale: Scale,
    chaos_results: list[ScenarioResult],
) -> None:
    scenarios.run(scenario, chaos_stack, chaos_scale, chaos_results)
