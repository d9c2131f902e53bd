"""The scale-out soak (`make chaos` only): many instances of every process, for minutes.

Two APIs sharing one port, two relays, three consumers (then four, then fewer), two
schedulers sharing one re-drive budget, on six partitions, under a warehouse failing 30%
of calls with a full outage in the middle. Every tenth order is cancelled by its
customer, some before and some after their reservation. While orders arrive a consumer
joins, one leaves with SIGTERM during the outage, one is killed with kill -9 after it and
a fresh one joins. Besides the usual audit (no order lost, none reserved twice, every
order final with a reason):

- the customer's cancel wins: every accepted cancel ends CANCELLED, no cancelled order
  holds stock, and the topic holds each order's events in one partition, placed first;
- the shared breaker opens once for the outage and closes once after it, every consumer
  and scheduler that lived through the outage saw both, and it never opened outside it;
- the two schedulers together re-drive at the configured rate, not twice it (and the
  budget is used: the check would fail if each took a budget of its own).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from local.logview import timestamp
from tests.chaos.audit import RESULTS_PATH, ScenarioResult, audit, write_json
from tests.chaos.harness import WAREHOUSE_FAULTS, ChaosStack, Scale
from tests.chaos.load import LoadRunner
from tests.chaos.scenarios import connection_errors, rebalance_errors, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ORDERS, RATE = 6000, 40.0
"""About 150 s of orders, with the outage in the middle."""
CANCEL_EVERY = 10
PARTITIONS = 6
REDRIVE_RATE, REDRIVE_BURST = 25.0, 10
"""Below the re-drive demand 30% failures make at 40 orders/s, so the budget binds."""
RATE_WINDOW_SECONDS = 10.0
PASS_SECONDS = 2.0
"""The longest re-drive pass: half the schedulers' 4 s lease (tests/chaos/harness.py). A
pass logs its count when it ends, so a window of log lines spans this much more time."""
BREAKER = "warehouse"


def expected(record: dict[str, Any]) -> bool:
    return rebalance_errors(record) or connection_errors(record)


def test_scaled_out_soak(
    chaos_stack: Any, chaos_scale: Scale, chaos_results: list[ScenarioResult]
) -> None:
    if chaos_scale.name != "full":
        pytest.skip("runs at full scale only (make chaos): minutes of load on every process")
    started = time.monotonic()
    stack: ChaosStack = chaos_stack(partitions=PARTITIONS)
    stack.overrides.update(
        {
            "STEADFAST_REDRIVE_RATE_PER_SECOND": str(REDRIVE_RATE),
            "STEADFAST_REDRIVE_BURST": str(REDRIVE_BURST),
        }
    )
    for name in (
        "relay-a", "relay-b", "consumer-a", "consumer-b", "consumer-c",
        "scheduler-a", "scheduler-b", "api-a", "api-b",
    ):  # fmt: skip
        stack.start(name)
    stack.wait_assigned()
    load = LoadRunner(
        base_url=stack.api_url,
        prefix=f"soak-{uuid.uuid4().hex[:6]}",
        total=ORDERS,
        rate=RATE,
        concurrency=chaos_scale.concurrency,
        client_deadline=chaos_scale.client_deadline,
        cancel_every=CANCEL_EVERY,
    ).start()

    load.wait_answered(int(0.15 * ORDERS), 120)
    stack.start("consumer-d")
    wait_for(lambda: len(stack.group_assignment()) == 4, 60, "four consumers in the group")
    load.wait_answered(int(0.3 * ORDERS), 120)
    outage = (time.time(), 0.0)
    stack.pipe.set_faults({"outage": True})
    stack.note(f"warehouse outage for {chaos_scale.outage_seconds:.0f}s")
    time.sleep(chaos_scale.outage_seconds / 2)
    stack.retire("consumer-b")
    time.sleep(chaos_scale.outage_seconds / 2)
    stack.pipe.set_faults(WAREHOUSE_FAULTS)
    outage = (outage[0], time.time())
    stack.note("warehouse back at 30% failures")
    load.wait_answered(int(0.75 * ORDERS), 180)
    stack.kill("consumer-c")
    stack.start("consumer-e")

    load.join(chaos_scale.client_deadline + ORDERS / RATE + 60)
    drained = stack.wait_drained(load.acknowledged().values(), chaos_scale.drain_timeout)
    stack.note(f"drained {drained:.1f}s after the last order was answered")
    result = audit(
        stack, load, scenario="scale-out-soak", drain_seconds=drained, expected_errors=expected
    )
    problems = result.problems()
    placed_by_api = {
        name: stack.counter(name, "steadfast_orders_placed") for name in ("api-a", "api-b")
    }
    result.notes["placed_by_api"] = placed_by_api
    if min(placed_by_api.values()) == 0:
        problems.append(f"an API replica placed nothing: {placed_by_api}")
    problems += _cancels_won(stack, load, result)
    problems += _events_in_key_order(stack, load)
    problems += _breaker_once_for_everybody(stack, outage, result)
    problems += _redrive_rate_held(stack, result)
    result.notes.update(stack.measured)
    result.wall_seconds = round(time.monotonic() - started, 1)
    chaos_results.append(result)
    write_json(RESULTS_PATH, chaos_scale.name, chaos_results)
    print(f"\nscale-out-soak: {result}")  # noqa: T201
    assert not problems, f"{problems}\n{stack.tails()}"


def _cancels_won(stack: ChaosStack, load: LoadRunner, result: ScenarioResult) -> list[str]:
    cancels = load.cancels()
    statuses = dict(stack.query("SELECT id::text, status FROM orders"))
    accepted = [order for order, code in cancels.items() if code == 202]
    lost_to_others = [o for o in accepted if statuses.get(o) != "CANCELLED"]
    # 409 would mean already final and not cancellable (DEAD, or cancelled before); the
    # cancelled orders never ask for the out-of-stock SKU, so none should be REJECTED.
    refused = [o for o, code in cancels.items() if code == 409 and statuses.get(o) == "RESERVED"]
    odd = {code for code in cancels.values() if code not in (202, 409)}
    stats = stack.pipe.warehouse_stats()
    held = int(stats["stock"]["reserved_units"])
    reserved_units = sum(1 for status in statuses.values() if status == "RESERVED")
    result.notes.update(
        cancels_asked=len(cancels),
        cancels_accepted=len(accepted),
        warehouse_releases=stats["releases"],
        reserved_units_held=held,
    )
    problems = []
    if len(accepted) < ORDERS // CANCEL_EVERY // 2:
        problems.append(f"only {len(accepted)} cancels accepted: the check checks little")
    if lost_to_others:
        problems.append(f"{len(lost_to_others)} accepted cancels did not win: {lost_to_others[:3]}")
    if refused:
        problems.append(f"{len(refused)} RESERVED orders refused a cancel: {refused[:3]}")
    if odd:
        problems.append(f"cancels answered {sorted(odd)}")
    if held != reserved_units:  # every order asks for one unit
        problems.append(f"the warehouse holds {held} units for {reserved_units} RESERVED orders")
    return problems


def _events_in_key_order(stack: ChaosStack, load: LoadRunner) -> list[str]:
    """Each cancelled order's events: one partition, OrderPlaced before OrderCancelled."""
    wanted = {order for order, code in load.cancels().items() if code == 202}
    seen: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    reader = Consumer(
        {
            "bootstrap.servers": stack.pipe.bootstrap,
            "group.id": f"soak-audit-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(stack.pipe.topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
        reader.assign([TopicPartition(stack.pipe.topic, p, 0) for p in range(PARTITIONS)])
        read = 0
        deadline = time.monotonic() + 60
        while read < sum(ends.values()) and time.monotonic() < deadline:
            for msg in reader.consume(1000, timeout=1):
                partition, offset = msg.partition(), msg.offset()
                if msg.error() is not None or partition is None or offset is None:
                    continue
                if offset >= ends[partition]:
                    continue
                read += 1
                key = (msg.key() or b"").decode()
                if key in wanted:
                    kind = dict(msg.headers() or []).get("event_type", b"").decode()
                    seen[key].append((partition, offset, kind))
    finally:
        reader.close()
    problems = []
    if read < sum(ends.values()):
        problems.append(f"read {read} of {sum(ends.values())} records of the topic")
    for key in wanted:
        events = sorted(seen.get(key, []), key=lambda e: e[1])
        kinds = [kind for _, _, kind in events]
        if len({partition for partition, _, _ in events}) != 1 or not {
            "OrderPlaced",
            "OrderCancelled",
        } <= set(kinds):
            problems.append(f"order {key}: events {events}")
        elif kinds.index("OrderPlaced") > kinds.index("OrderCancelled"):
            problems.append(f"order {key}: cancelled before placed in the topic: {events}")
    return problems[:10]


def _at(record: dict[str, Any]) -> float:
    when = timestamp(record)
    assert when is not None, f"a log line without a readable @timestamp: {record}"
    return when.timestamp()


def _breaker_once_for_everybody(
    stack: ChaosStack, outage: tuple[float, float], result: ScenarioResult
) -> list[str]:
    begin, end = outage
    decided: list[tuple[float, str, str, str]] = []
    saw: dict[str, set[str]] = defaultdict(set)
    lived: list[str] = []
    for name, proc in stack.procs.items():
        if not name.startswith(("consumer", "scheduler")):
            continue
        records = proc.logs()
        stamps = [_at(r) for r in records if "@timestamp" in r]
        if stamps and min(stamps) < begin and name not in stack.killed | stack.retired:
            lived.append(name)
        for r in records:
            action = r.get("event.action")
            if r.get("breaker.name") != BREAKER or action not in (
                "breaker_transition",
                "breaker_state_observed",
            ):
                continue
            saw[name].add(str(r["breaker.to_state"]))
            if action == "breaker_transition":
                decided.append((_at(r), name, r["breaker.from_state"], r["breaker.to_state"]))
    decided.sort()
    opened = [d for d in decided if d[2] == "CLOSED" and d[3] == "OPEN"]
    closed = [d for d in decided if d[3] == "CLOSED"]
    result.notes["breaker_decided"] = [f"{t - begin:+.1f}s {n} {a}->{b}" for t, n, a, b in decided]
    problems = []
    if len(opened) != 1 or len(closed) != 1:
        problems.append(f"breaker opened {len(opened)}x, closed {len(closed)}x: {decided[:12]}")
    # It may open a window after the outage starts and close a probe after it ends.
    slack = 30.0
    outside = [d for d in opened + closed if not begin <= d[0] <= end + slack]
    if outside:
        problems.append(f"breaker changes outside the outage: {outside}")
    blind = [name for name in lived if not {"OPEN", "CLOSED"} <= saw[name]]
    if blind:
        problems.append(f"never saw the breaker open and close: {blind}")
    return problems


def _redrive_rate_held(stack: ChaosStack, result: ScenarioResult) -> list[str]:
    """Tokens both schedulers used, per window of their passes, against the shared bucket.

    A pass's tokens are its rows claimed minus those handed back because the breaker was
    not closed (claimed again later, from new tokens)."""
    used: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for name, proc in stack.procs.items():
        if name.startswith("scheduler"):
            for r in proc.logs():
                if r.get("event.action") == "redrive_pass":
                    tokens = int(r.get("retry.claimed", 0)) - int(r.get("retry.skipped_breaker", 0))
                    used[name].append((_at(r), tokens))
    passes = sorted(p for rows in used.values() for p in rows)
    if not passes:
        return ["no re-drive pass logged"]
    busiest, start = 0, 0
    for i, (t, _) in enumerate(passes):
        while passes[start][0] < t - RATE_WINDOW_SECONDS:
            start += 1
        busiest = max(busiest, sum(n for _, n in passes[start : i + 1]))
    # What the bucket can hand out over the window plus one pass: its burst and the rate
    # (10% for the two clocks). One budget per scheduler would allow twice the rate.
    ceiling = REDRIVE_BURST + REDRIVE_RATE * (RATE_WINDOW_SECONDS + PASS_SECONDS) * 1.1
    by_scheduler = {name: sum(n for _, n in rows) for name, rows in sorted(used.items())}
    result.notes.update(
        redrive_busiest_per_second=round(busiest / RATE_WINDOW_SECONDS, 1),
        redrive_budget_per_second=REDRIVE_RATE,
        redriven_by_scheduler=by_scheduler,
    )
    problems = []
    if busiest > ceiling:
        problems.append(f"re-driven {busiest} in {RATE_WINDOW_SECONDS:.0f}s, budget {ceiling:.0f}")
    if busiest < 0.8 * REDRIVE_RATE * RATE_WINDOW_SECONDS:
        problems.append(f"the budget never bound ({busiest} in a window): the check checks little")
    if len(by_scheduler) < 2 or min(by_scheduler.values()) == 0:
        problems.append(f"a scheduler re-drove nothing: {by_scheduler}")
    return problems
