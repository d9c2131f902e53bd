"""The chaos harness: the whole pipeline as real processes the test may kill and restart.

`make run` supervises its children with honcho, which cannot bring back a child killed
with kill -9, so the harness starts every process itself (through `tests/processes.py`,
JSON logs to files) on top of the reservation tests' `Pipeline`: API, relay, one or more
consumers and the scheduler, a warehouse mock failing 30% of calls, a private broker
(Apache Kafka, one node or three; noida-db without Java) and a fresh database (or a
private PostgreSQL that can be restarted).

Scale comes from STEADFAST_CHAOS_SCALE: `reduced` (the default, inside `make test`) or
`full` (`make chaos`: thousands of orders per scenario and the real 60 s outage).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import KafkaException

from local import infra
from services.reservation.domain import FINAL_STATUSES
from tests.integration.reservation.conftest import Pipeline
from tests.processes import Proc, base_env, metric_sum, start_warehouse, wait_until

SCALE_ENV = "STEADFAST_CHAOS_SCALE"
FINAL = tuple(sorted(s.value for s in FINAL_STATUSES))
# 30% of warehouse calls fail with a retryable status (429 carries Retry-After: 1).
WAREHOUSE_FAULTS: dict[str, Any] = {"failure_rate": 0.3, "status_codes": [500, 502, 503, 429]}


@dataclass(frozen=True, kw_only=True)
class Scale:
    name: str
    orders: int
    """Orders per scenario."""
    rate: float
    """Orders offered per second."""
    concurrency: int
    outage_seconds: float
    down_seconds: float
    """How long a restarted broker or PostgreSQL stays down."""
    drain_timeout: float
    client_deadline: float

    def __post_init__(self) -> None:
        if self.orders < 20 or self.rate <= 0 or self.concurrency < 1:
            raise ValueError(f"unusable chaos scale: {self}")


SCALES = {
    "reduced": Scale(
        name="reduced",
        orders=150,
        rate=50,
        concurrency=8,
        outage_seconds=6,
        down_seconds=1.5,
        drain_timeout=120,
        client_deadline=60,
    ),
    "full": Scale(
        name="full",
        orders=2600,
        rate=120,
        concurrency=24,
        outage_seconds=60,
        down_seconds=5,
        drain_timeout=900,
        client_deadline=180,
    ),
}


ORDERS_ENV = "STEADFAST_CHAOS_ORDERS"


def scale_from_env() -> Scale:
    """The named scale; STEADFAST_CHAOS_ORDERS overrides its orders per scenario (a full
    run with fewer orders on a machine other work is slowing down)."""
    name = os.environ.get(SCALE_ENV, "reduced")
    if name not in SCALES:
        raise ValueError(f"{SCALE_ENV}={name!r}: choose one of {', '.join(SCALES)}")
    orders = os.environ.get(ORDERS_ENV)
    return replace(SCALES[name], orders=int(orders)) if orders else SCALES[name]


# Short windows, delays and leases, so a killed process's work comes back in seconds; many
# attempts, so 30% random failures never exhaust an order. The breaker still opens for an
# outage (100% failures) but not on the bad luck of 30%.
KNOBS = {
    "STEADFAST_POLL_INTERVAL_SECONDS": "0.5",
    "STEADFAST_LEASE_SECONDS": "8",
    "STEADFAST_BREAKER__WINDOW_SECONDS": "5",
    "STEADFAST_BREAKER__MIN_CALLS": "20",
    "STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD": "0.7",
    "STEADFAST_BREAKER__OPEN_SECONDS": "2",
    "STEADFAST_BREAKER__SYNC_INTERVAL_SECONDS": "0.2",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.2",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "2",
    "STEADFAST_RETRY__MAX_ATTEMPTS": "40",
    "STEADFAST_INTERVAL_SECONDS": "0.2",
    "STEADFAST_REDRIVE_RATE_PER_SECOND": "500",
    "STEADFAST_REDRIVE_BURST": "100",
    "STEADFAST_WAREHOUSE__READ_TIMEOUT_SECONDS": "2",
}
ROLES = {
    "api": "steadfast-api",
    "relay": "steadfast-relay",
    "consumer": "steadfast-consumer",
    "scheduler": "steadfast-scheduler",
}


@dataclass
class ChaosStack:
    pipe: Pipeline
    broker: infra.AnyBroker
    pg: infra.Postgres | None = None
    pipe_partitions: int = 3
    api_port: int = field(default_factory=infra.free_port)
    killed: set[str] = field(default_factory=set)
    retired: set[str] = field(default_factory=set)
    """Stopped on purpose with SIGTERM (scaled in): they must exit 0, having logged no crash."""
    overrides: dict[str, str] = field(default_factory=dict)
    """Settings on top of KNOBS for every process a scenario starts."""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    """Figures a scenario measured (failover seconds), carried into its result."""
    _started_at: float = field(default_factory=time.monotonic)

    @property
    def cluster(self) -> infra.KafkaCluster:
        assert isinstance(self.broker, infra.KafkaCluster), "needs the Apache Kafka broker"
        return self.broker

    def group_assignment(self) -> dict[str, list[int]]:
        """Consumer group members (member id) → partitions of the topic they hold."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.pipe.bootstrap, "log_level": 0})
        description = None
        for _ in range(10):
            future = admin.describe_consumer_groups([self.pipe.group], request_timeout=5)
            try:
                description = future[self.pipe.group].result(5)
                break
            except KafkaException:
                # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS: the coordinator moving or
                # loading (a rebalance, a restart, a fresh group): ask again.
                time.sleep(0.3)
        if description is None:
            return {}  # unknown for now: the caller's wait polls again
        return {
            member.member_id: sorted(
                tp.partition
                for tp in (member.assignment.topic_partitions if member.assignment else [])
                if tp.topic == self.pipe.topic
            )
            for member in description.members
        }

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until the group holds every partition of the topic: a disruption is meant to hit
        a pipeline in its steady state, not a consumer still bootstrapping (one that cannot
        bootstrap exits, for its supervisor to start again)."""
        deadline = time.monotonic() + timeout
        held: set[int] = set()
        while time.monotonic() < deadline:
            held = {p for parts in self.group_assignment().values() for p in parts}
            if len(held) == self.pipe_partitions:
                return
            self.assert_running()
            time.sleep(0.2)
        raise AssertionError(
            f"the group holds partitions {sorted(held)} of {self.pipe_partitions} after {timeout}s"
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def procs(self) -> dict[str, Proc]:
        return self.pipe.procs

    def note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self._started_at, 2), what))

    # -- processes --------------------------------------------------------------------------

    def start(self, name: str) -> Proc:
        """Start `name` ("consumer-b", "relay.2": role before the first '-' or '.')."""
        role = name.split(".")[0].split("-")[0]
        extra = {"STEADFAST_METRICS_PORT": str(infra.free_port())}
        if role == "api":
            # Replicas (and a restarted API) share the one port the clients know.
            extra = {
                "STEADFAST_PORT": str(self.api_port),
                "STEADFAST_REUSE_PORT": "true",
                "STEADFAST_METRICS_PORT": str(infra.free_port()),
            }
        if role in ("consumer", "scheduler", "relay"):
            extra["STEADFAST_INSTANCE_ID"] = name
        if role == "scheduler":
            # A killed scheduler's leased rows wait this long; the relay keeps 8 s, as its
            # delivery timeout is a quarter of its lease.
            extra["STEADFAST_LEASE_SECONDS"] = "4"
        if role == "consumer":
            # faust keeps a data dir per app; two consumers on one host must not share it.
            extra["STEADFAST_DATA_DIR"] = str(self.pipe.log_dir / f"faust-{name}")
        self.metrics_ports[name] = int(extra["STEADFAST_METRICS_PORT"])
        proc = self.pipe.start(name, ROLES[role], **{**KNOBS, **self.overrides, **extra})
        if role == "api":
            # The replica's own port first: the shared one may be answered by another API.
            own = f"http://127.0.0.1:{extra['STEADFAST_METRICS_PORT']}/metrics"
            wait_until(lambda: httpx.get(own, timeout=1).status_code == 200, 90, f"{name}", proc)
            wait_until(
                lambda: httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200,
                # Generous: on a busy 2-core machine a cold start takes many seconds.
                90,
                "the API to answer /health",
                proc,
            )
        self.note(f"started {name}")
        return proc

    def start_all(self, consumers: Iterable[str] = ("consumer",)) -> None:
        for name in ("relay", *consumers, "scheduler", "api"):
            self.start(name)

    def kill(self, name: str) -> None:
        """kill -9; the process's own work must come back through leases and Kafka."""
        proc = self.procs[name]
        assert proc.alive(), f"{name} was already dead before the kill:\n{proc.tail()}"
        proc.kill()
        self.killed.add(name)
        self.note(f"kill -9 {name} (pid {proc.process.pid})")

    def counter(self, name: str, metric: str, **labels: str) -> float:
        """A counter's value (summed over the samples matching `labels`) on `name`'s /metrics."""
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        return metric_sum(url, f"{metric}_total", **labels)

    def retire(self, name: str) -> float:
        """Scale `name` in: SIGTERM, as an orchestrator removing a replica; its seconds to exit."""
        took = self.procs[name].stop(timeout=30)
        self.retired.add(name)
        self.note(f"stopped {name} (SIGTERM) in {took:.1f}s")
        return took

    def restart(self, name: str) -> Proc:
        """Start a fresh instance in place of killed `name`, logging to its own file."""
        generation = 2 + sum(1 for other in self.procs if other.startswith(f"{name}."))
        self.restarts += 1
        return self.start(f"{name}.{generation}")

    def stop_all(self) -> None:
        self.pipe.stop_all()

    # -- the database -----------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pipe.database_url, connect_timeout=3) as conn:
            return list(conn.execute(sql, params).fetchall())

    def wait_drained(self, acknowledged: Iterable[str], timeout: float) -> float:
        """Seconds until every order is final and every acknowledged one exists."""
        wanted = set(acknowledged)
        started = time.monotonic()
        seen: dict[str, int] = {}
        missing = len(wanted)
        while time.monotonic() - started < timeout:
            try:
                rows = self.query("SELECT id::text, status FROM orders")
            except psycopg.OperationalError:
                time.sleep(0.5)
                continue
            seen = {}
            for _, status in rows:
                seen[status] = seen.get(status, 0) + 1
            missing = len(wanted - {order_id for order_id, _ in rows})
            if missing == 0 and all(status in FINAL for status in seen):
                return time.monotonic() - started
            self.assert_running()
            time.sleep(0.25)
        raise AssertionError(
            f"not drained after {timeout}s: statuses {seen}, {missing} acknowledged orders "
            f"missing\n{self.tails()}"
        )

    # -- health -----------------------------------------------------------------------------

    def assert_running(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.killed | self.retired and not proc.alive():
                raise AssertionError(
                    f"{name} died (exit {proc.process.returncode}):\n{proc.tail()}"
                )

    def crashes(self, expected: Callable[[dict[str, Any]], bool]) -> dict[str, list[str]]:
        """Per process not killed: tracebacks logged at ERROR/CRITICAL (or printed raw) that
        `expected` does not excuse."""
        found: dict[str, list[str]] = {}
        for name, proc in self.procs.items():
            if name in self.killed:
                continue
            bad = [
                f"{r.get('log.logger')}: {r.get('message')} [{r.get('error.type')}]"
                for r in proc.logs()
                if r.get("log.level") in ("error", "critical")
                and r.get("error.stack_trace")
                and not expected(r)
            ]
            raw = [
                line
                for line in proc.log_path.read_text(errors="replace").splitlines()
                if line.startswith("Traceback")
            ]
            if not proc.alive() and not (name in self.retired and proc.process.returncode == 0):
                bad.append(f"exited with {proc.process.returncode}")
            if bad or raw:
                found[name] = bad + raw
        return found

    def tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}\n{proc.tail(lines)}" for name, proc in self.procs.items())


def build_stack(
    *,
    broker: infra.AnyBroker,
    database_url: str,
    log_dir: Path,
    pg: infra.Postgres | None = None,
    partitions: int = 3,
) -> ChaosStack:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    infra.ensure_topics(broker.bootstrap, {topic: partitions})
    warehouse = start_warehouse(
        log_dir, STEADFAST_WAREHOUSE_FAULT_SEED=str(uuid.uuid4().int % 10_000)
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = base_env(
        {
            "STEADFAST_DATABASE_URL": database_url,
            "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "STEADFAST_KAFKA__TOPIC": topic,
            "STEADFAST_KAFKA__PARTITIONS": str(partitions),
            "STEADFAST_KAFKA__CONSUMER_GROUP": group,
            "STEADFAST_WAREHOUSE__BASE_URL": warehouse.urls["base"],
        }
    )
    pipe = Pipeline(database_url, broker.bootstrap, topic, group, warehouse, log_dir, env)
    pipe.set_faults(WAREHOUSE_FAULTS)
    return ChaosStack(pipe=pipe, broker=broker, pg=pg, pipe_partitions=partitions)


def replay_partition(bootstrap: str, topic: str, partition: int, timeout: float = 30) -> int:
    """Produce again every record of `partition` from offset 0 up to its current end, with
    the same key, value and headers: the duplicate delivery an at-least-once relay (or a
    reset consumer group) causes. Returns how many records were replayed."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        _, end = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        reader.assign([TopicPartition(topic, partition, 0)])
        records: list[tuple[bytes | None, bytes | None, Any]] = []
        deadline = time.monotonic() + timeout
        while len(records) < end and time.monotonic() < deadline:
            for msg in reader.consume(500, timeout=1):
                offset = msg.offset()
                if msg.error() is None and offset is not None and offset < end:
                    records.append((msg.key(), msg.value(), msg.headers()))
    finally:
        reader.close()
    assert len(records) == end, f"read {len(records)} of {end} records of {topic}[{partition}]"
    writer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        writer.produce(topic, value=value, key=key, headers=headers, partition=partition)
        writer.poll(0)
    assert writer.flush(timeout) == 0, "replayed records not all delivered"
    return len(records)
