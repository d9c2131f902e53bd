"""The chaos scenarios: orders flow through a warehouse failing 30% of calls while one
thing breaks.

One scenario per failure: kill -9 of a consumer (a second one in the group takes its
partitions over once its session expires; the time that takes is measured), of the relay,
of the scheduler and of the API in mid-request; a broker restart, a PostgreSQL restart, a
warehouse outage, and duplicate delivery (a partition replayed from offset 0). On a
three-node Apache Kafka cluster (replication factor 3, min.insync.replicas 2, producer
acks=all with idempotence): kill -9 of the broker that leads the most order partitions,
and a rolling restart of all three brokers. A consumer frozen with SIGSTOP past its session
timeout, then woken (two members holding the same events). Each ends with the same audit: no order
lost, none reserved twice, every order final with a reason, nothing half-written, and no
process that was left alone crashed or logged a traceback beyond expected connection
errors. Killed processes are restarted by the test, as a supervisor would.

STEADFAST_CHAOS_SCALE=full (`make chaos`) runs thousands of orders per scenario and the
real 60 s outage; the default reduced scale runs inside `make test`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.chaos.audit import RESULTS_PATH, ScenarioResult, audit, write_json
from tests.chaos.harness import WAREHOUSE_FAULTS, ChaosStack, Scale, replay_partition
from tests.chaos.load import LoadRunner

Disrupt = Callable[[ChaosStack, LoadRunner, Scale], None]

# What a process may log at ERROR with a traceback while the database or broker it talks
# to is restarting: the connection failing is the expected part, anything else is a bug.
CONNECTION_ERRORS = frozenset(
    {
        "OperationalError",
        "InterfaceError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "ConnectionError",
        "BrokenPipeError",
        "KafkaConnectionError",
        "KafkaException",
        "KafkaError",
        "NodeNotReadyError",
        "RequestTimedOutError",
        "TimeoutError",
    }
)


def nothing_expected(record: dict[str, Any]) -> bool:
    return False


def connection_errors(record: dict[str, Any]) -> bool:
    return record.get("error.type") in CONNECTION_ERRORS


def rebalance_errors(record: dict[str, Any]) -> bool:
    """A consumer's commit refused while the group rebalances around a dead member."""
    return record.get("error.type") in {"CommitFailedError", "IllegalStateError"}


@dataclass(frozen=True)
class Scenario:
    name: str
    disrupt: Disrupt
    at: float
    """Share of the orders answered before the disruption starts."""
    broker: str | None = None
    """None: Apache Kafka (or the stand-in without Java), as `make run` picks."""
    kafka_nodes: int = 1
    partitions: int = 3
    consumers: tuple[str, ...] = ("consumer",)
    private_pg: bool = False
    expected_errors: Callable[[dict[str, Any]], bool] = nothing_expected
    after_drain: Callable[[ChaosStack, LoadRunner, Scale], dict[str, Any]] | None = None
    in_reduced: bool = True
    """False: only `make chaos` runs it. `make test` keeps one scenario of each kind of
    failure within its 10-minute budget; the others' invariants also have integration
    tests (an outage, a redelivery), or a cheaper scenario of the same kind (leader-kill
    for the cluster)."""


def kill_and_restart(name: str, pause: float = 1.0) -> Disrupt:
    def disrupt(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
        stack.kill(name)
        time.sleep(pause)  # a supervisor's restart delay
        stack.restart(name)

    return disrupt


def kill_consumer(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    # consumer-b takes the partitions over once consumer-a's session expires (measured);
    # consumer-a comes back afterwards and the group rebalances again under load.
    wait_for(lambda: len(stack.group_assignment()) == 2, 60, "both consumers in the group")
    stack.kill("consumer-a")
    killed = time.monotonic()
    wait_for(
        lambda: _owns_everything(stack),
        60,
        "the survivor to own every partition",
    )
    stack.measured["failover_seconds"] = round(time.monotonic() - killed, 2)
    stack.note(f"consumer-b owns every partition {stack.measured['failover_seconds']}s later")
    stack.restart("consumer-a")


def pause_consumer(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    """SIGSTOP a consumer past its session timeout, then SIGCONT it.

    The group gives its partitions to the survivor while the frozen one still holds a
    batch (fetched, perhaps called, not yet written). Woken, it finishes that batch: two
    members have worked on the same events, and the outcome write's per-event lock must
    let only one of them record each.
    """
    wait_for(lambda: len(stack.group_assignment()) == 2, 60, "both consumers in the group")
    pid = stack.procs["consumer-a"].process.pid
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: _owns_everything(stack), 60, "the survivor to own every partition")
        stack.measured["takeover_seconds"] = round(time.monotonic() - stopped, 2)
        time.sleep(2.0)  # the survivor works on the frozen member's events meanwhile
    finally:
        os.kill(pid, signal.SIGCONT)
    stack.measured["stopped_seconds"] = round(time.monotonic() - stopped, 2)
    stack.note(f"consumer-a frozen {stack.measured['stopped_seconds']}s, then woken")
    wait_for(lambda: len(stack.group_assignment()) == 2, 60, "the woken consumer to rejoin")


def duplicate_verdicts(stack: ChaosStack, load: LoadRunner, scale: Scale) -> dict[str, Any]:
    """How many events a consumer found already recorded by another member (redelivered
    after a rebalance, or written first by the other one of two members holding it): the
    overlap the audit's 0 duplicate reservations held through."""
    found = {
        name: stack.counter(name, "steadfast_consumed_messages", outcome="duplicate")
        for name in stack.procs
        if name.startswith("consumer") and stack.procs[name].alive()
    }
    stack.note(f"duplicate verdicts per consumer: {found}")
    return {"duplicate_verdicts": found}


def _owns_everything(stack: ChaosStack) -> bool:
    members = stack.group_assignment()
    return len(members) == 1 and len(next(iter(members.values()))) == stack.pipe_partitions


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill_partition_leader(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    cluster = stack.cluster
    leaders = cluster.leaders(stack.pipe.topic)
    counts = {node.node_id: 0 for node in cluster.nodes}
    for leader in leaders.values():
        counts[leader] += 1
    victim = max(counts, key=lambda node: counts[node])
    stack.note(f"kill -9 kafka-{victim}, leader of {counts[victim]}/{len(leaders)} partitions")
    cluster.kill(victim)
    wait_for(
        lambda: victim not in _live_leaders(stack), 30, f"leadership to move off kafka-{victim}"
    )
    stack.note(f"leadership moved: {cluster.leaders(stack.pipe.topic)}")
    time.sleep(scale.down_seconds * 2)
    cluster.start_node(victim)
    stack.note(f"kafka-{victim} restarted")


def _live_leaders(stack: ChaosStack) -> set[int]:
    try:
        return set(stack.cluster.leaders(stack.pipe.topic).values())
    except Exception:  # a metadata request may fail while the controller moves
        return {-1}


def rolling_restart(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    """Each broker in turn: SIGTERM (controlled shutdown), start, wait for a full ISR."""
    cluster = stack.cluster
    for node in cluster.nodes:
        stack.note(f"rolling: stop kafka-{node.node_id}")
        cluster.stop_node(node.node_id)
        time.sleep(scale.down_seconds)
        cluster.start_node(node.node_id)
        wait_for(
            lambda: cluster.under_replicated(stack.pipe.topic) == 0,
            60,
            "every replica back in sync",
        )
        stack.note(f"rolling: kafka-{node.node_id} back, ISR full")


def kill_scheduler(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    # Aim for a kill while the scheduler holds leases: parked retries in mid-redrive.
    deadline = time.monotonic() + 10
    leased = 0
    while time.monotonic() < deadline and leased == 0:
        leased = stack.query("SELECT count(*) FROM retry_messages WHERE state = 'IN_PROGRESS'")[0][
            0
        ]
        time.sleep(0.02)
    stack.note(f"{leased} retry rows leased at the kill")
    kill_and_restart("scheduler")(stack, load, scale)


def kill_api(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    # Twice, with requests in flight each time; clients retry with the same key meanwhile.
    for generation, share in (("api", 0.0), ("api.2", 0.3)):
        load.wait_answered(load.answered + int(share * load.total), 60)
        stack.note(f"{load.in_flight} requests in flight at the kill")
        stack.kill(generation)
        time.sleep(1.0)
        stack.restart("api")


def restart_broker(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    stack.note("broker stop (SIGTERM)")
    stack.broker.stop()
    time.sleep(scale.down_seconds)
    stack.broker.start()
    stack.note("broker started")


def restart_postgres(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    assert stack.pg is not None
    stack.note("postgres stop (fast)")
    stack.pg.stop()
    time.sleep(scale.down_seconds)
    stack.pg._start()
    stack.note("postgres started")


def warehouse_outage(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    stack.pipe.set_faults({"outage": True})
    stack.note(f"warehouse outage for {scale.outage_seconds:.0f}s")
    time.sleep(scale.outage_seconds)
    stack.pipe.set_faults(WAREHOUSE_FAULTS)
    stack.note("warehouse back at 30% failures")


def replay_live(stack: ChaosStack, load: LoadRunner, scale: Scale) -> None:
    replayed = replay_partition(stack.pipe.bootstrap, stack.pipe.topic, 0)
    stack.note(f"replayed {replayed} records of partition 0 under load")


def replay_after_drain(stack: ChaosStack, load: LoadRunner, scale: Scale) -> dict[str, Any]:
    """Replay partition 0 again once everything is final: each record must be recognised
    as already done, with no new warehouse call."""
    before = stack.pipe.warehouse_stats()["lines"]
    replayed = replay_partition(stack.pipe.bootstrap, stack.pipe.topic, 0)
    stack.note(f"replayed {replayed} records of partition 0 after the drain")
    deadline = time.monotonic() + scale.drain_timeout
    while any(stack.pipe.lag().values()):
        assert time.monotonic() < deadline, f"replay not consumed: lag {stack.pipe.lag()}"
        stack.assert_running()
        time.sleep(0.5)
    after = stack.pipe.warehouse_stats()["lines"]
    assert after == before, f"replayed events called the warehouse again: {before} → {after}"
    return {"replayed_after_drain": replayed, "warehouse_lines_added": after - before}


# Consumers leaving and coming back: a file of their own (test_chaos_rebalance.py), so
# pytest-xdist's --dist loadfile spreads the chaos tier over the workers.
REBALANCE = [
    Scenario(
        "consumer-failover",
        kill_consumer,
        at=0.3,
        consumers=("consumer-a", "consumer-b"),
        expected_errors=rebalance_errors,
    ),
    Scenario(
        "consumer-pause",
        pause_consumer,
        at=0.3,
        consumers=("consumer-a", "consumer-b"),
        expected_errors=rebalance_errors,
        after_drain=duplicate_verdicts,
    ),
]
PROCESS_KILLS = [
    Scenario("relay-kill", kill_and_restart("relay"), at=0.4),
    Scenario("scheduler-kill", kill_scheduler, at=0.5),
    Scenario("api-kill", kill_api, at=0.25),
]
INFRASTRUCTURE = [
    Scenario("broker-restart", restart_broker, at=0.3, expected_errors=connection_errors),
    Scenario(
        "postgres-restart",
        restart_postgres,
        at=0.3,
        private_pg=True,
        expected_errors=connection_errors,
    ),
    Scenario("warehouse-outage", warehouse_outage, at=0.25, in_reduced=False),
    Scenario(
        "duplicate-delivery", replay_live, at=0.5, after_drain=replay_after_drain, in_reduced=False
    ),
]


CLUSTER = [
    Scenario(
        "leader-kill",
        kill_partition_leader,
        at=0.3,
        broker="kafka",
        kafka_nodes=3,
        partitions=6,
        expected_errors=connection_errors,
    ),
    Scenario(
        "rolling-restart",
        rolling_restart,
        at=0.2,
        in_reduced=False,
        broker="kafka",
        kafka_nodes=3,
        partitions=6,
        expected_errors=connection_errors,
    ),
]


def run(
    scenario: Scenario,
    chaos_stack: Callable[..., ChaosStack],
    chaos_scale: Scale,
    chaos_results: list[ScenarioResult],
) -> None:
    """Start the stack, offer the orders, break one thing, drain, audit."""
    if chaos_scale.name != "full" and not scenario.in_reduced:
        pytest.skip("runs at full scale only (make chaos), to keep make test in its budget")
    started = time.monotonic()
    stack = chaos_stack(
        broker=scenario.broker,
        kafka_nodes=scenario.kafka_nodes,
        partitions=scenario.partitions,
        private_pg=scenario.private_pg,
    )
    stack.start_all(consumers=scenario.consumers)
    load = LoadRunner(
        base_url=stack.api_url,
        prefix=scenario.name,
        total=chaos_scale.orders,
        rate=chaos_scale.rate,
        concurrency=chaos_scale.concurrency,
        client_deadline=chaos_scale.client_deadline,
    ).start()
    load.wait_answered(int(scenario.at * chaos_scale.orders), 120)
    stack.wait_assigned()
    scenario.disrupt(stack, load, chaos_scale)
    load.join(chaos_scale.client_deadline + chaos_scale.orders / chaos_scale.rate + 30)
    drained = stack.wait_drained(load.acknowledged().values(), chaos_scale.drain_timeout)
    stack.note(f"drained {drained:.1f}s after the last order was answered")
    notes = scenario.after_drain(stack, load, chaos_scale) if scenario.after_drain else {}
    result = audit(
        stack,
        load,
        scenario=scenario.name,
        drain_seconds=drained,
        expected_errors=scenario.expected_errors,
    )
    result.notes.update(notes)
    result.notes.update(stack.measured)
    result.wall_seconds = round(time.monotonic() - started, 1)
    chaos_results.append(result)
    if chaos_scale.name == "full":
        # After every scenario, so a run cut short still leaves what it measured.
        write_json(RESULTS_PATH, chaos_scale.name, chaos_results)
    print(f"\n{scenario.name}: {result}")  # noqa: T201
    assert not result.problems(), f"{result.problems()}\n{stack.tails()}"
