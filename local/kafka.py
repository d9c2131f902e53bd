"""Real Apache Kafka on loopback: 1 or 3 combined KRaft broker + controller JVMs, no Docker.

`KafkaCluster.create(state_dir, nodes=…)` picks free loopback ports, writes each node's
`server.properties` and formats its storage (once: a re-run keeps the data), and
`start()` runs the JVMs (heap bounded at 512 MB, logs in `<state>/kafka-<n>.log`). Ready
means a real metadata request on the internal listener sees every broker, not a sleep.
`stop()` sends SIGTERM and SIGKILL after a grace; `kill(node)` and `start_node(node)`
serve the chaos tests.

Every node has an unauthenticated PLAINTEXT listener (`INTERNAL`: inter-broker traffic,
readiness, and every client unless security is asked for) and a controller listener.
`KafkaSecurity` adds a `CLIENT` listener with SASL/SCRAM, optionally over TLS with a
throwaway CA, and its `bootstrap` then points there: the local stand-in for a secured
production cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.kafka_jars import KafkaJars, KafkaRuntimeError, java_executable
from local.net import LOOPBACK, free_port

log = logging.getLogger(__name__)

HEAP = "-Xmx512m"
READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
SCRAM_MECHANISM = "SCRAM-SHA-512"

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


@dataclass(frozen=True)
class KafkaSecurity:
    """A SASL/SCRAM client listener, over TLS when `tls` is set (SASL_SSL)."""

    username: str = "steadfast"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    tls: bool = False

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"


@dataclass
class KafkaNode:
    node_id: int
    port: int
    """The INTERNAL (PLAINTEXT) listener."""
    controller_port: int
    client_port: int | None
    """The secured CLIENT listener, when the cluster has one."""
    state_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.state_dir / f"kafka-{self.node_id}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"kafka-{self.node_id}.log"

    @property
    def internal(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """1 or 3 KRaft nodes sharing a cluster id; the `Broker` shape the launcher expects."""

    nodes: list[KafkaNode]
    state_dir: Path
    jars: KafkaJars
    security: KafkaSecurity | None = None
    ca_file: Path | None = None
    kind: str = "kafka"

    # -- building -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        state_dir: Path,
        *,
        nodes: int = 1,
        security: KafkaSecurity | None = None,
        jars: KafkaJars | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> KafkaCluster:
        if nodes not in (1, 3):
            raise KafkaRuntimeError(f"a local cluster has 1 or 3 nodes, not {nodes}")
        jars = jars or KafkaJars()
        jars.ensure()
        state_dir.mkdir(parents=True, exist_ok=True)
        members = [
            KafkaNode(
                node_id=n,
                port=free_port(),
                controller_port=free_port(),
                client_port=free_port() if security else None,
                state_dir=state_dir,
            )
            for n in range(1, nodes + 1)
        ]
        if security is not None:
            security = _remembered(state_dir, security)
        cluster = cls(members, state_dir, jars, security)
        if security and security.tls:
            cluster.ca_file = _write_tls_material(state_dir)
        cluster._configure(dict(overrides or {}))
        cluster._format()
        return cluster

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def internal_bootstrap(self) -> str:
        return ",".join(n.internal for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """What clients use: the secured listener when there is one."""
        if self.security is None:
            return self.internal_bootstrap
        return ",".join(f"{LOOPBACK}:{n.client_port}" for n in self.nodes)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.nodes[0].process

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    @property
    def data_dir(self) -> Path:
        return self.nodes[0].data_dir

    def pids(self) -> dict[str, int]:
        return {f"kafka-{n.node_id}": n.process.pid for n in self.nodes if n.process and n.alive()}

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for a client of `bootstrap` (empty when unsecured)."""
        if self.security is None:
            return {}
        config = {
            "security.protocol": self.security.protocol,
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.security.username,
            "sasl.password": self.security.password,
        }
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def client_env(self) -> dict[str, str]:
        """The `STEADFAST_KAFKA_SECURITY__*` variables our processes read."""
        if self.security is None:
            return {}
        env = {
            "STEADFAST_KAFKA_SECURITY__PROTOCOL": self.security.protocol,
            "STEADFAST_KAFKA_SECURITY__SASL_MECHANISM": SCRAM_MECHANISM,
            "STEADFAST_KAFKA_SECURITY__SASL_USERNAME": self.security.username,
            "STEADFAST_KAFKA_SECURITY__SASL_PASSWORD": self.security.password,
        }
        if self.ca_file is not None:
            env["STEADFAST_KAFKA_SECURITY__SSL_CA_FILE"] = str(self.ca_file)
        return env

    def _properties(self, node: KafkaNode, overrides: Mapping[str, str]) -> dict[str, str]:
        n = self.size
        replicas = str(min(3, n))
        min_isr = str(min(2, n))
        listeners = [
            f"INTERNAL://{node.internal}",
            f"CONTROLLER://{LOOPBACK}:{node.controller_port}",
        ]
        advertised = [f"INTERNAL://{node.internal}"]
        protocols = ["INTERNAL:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "controller.quorum.voters": ",".join(
                f"{m.node_id}@{LOOPBACK}:{m.controller_port}" for m in self.nodes
            ),
            "log.dirs": str(node.data_dir / "log"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Joins are not held back 3 s waiting for more members (tests start one).
            "group.initial.rebalance.delay.ms": "0",
            # Must exceed 1 MiB per cleaner thread (the default is 128 MiB of heap).
            "log.cleaner.dedupe.buffer.size": str(2 * 2**20),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "num.replica.fetchers": "1",
            "log.segment.bytes": str(64 * 2**20),
        }
        if n > 1:
            # A node killed with -9 is fenced after 3 s instead of 9 s, so leadership moves
            # while a load is still running.
            props["broker.session.timeout.ms"] = "3000"
            props["broker.heartbeat.interval.ms"] = "500"
        if self.security is not None:
            listeners.append(f"CLIENT://{LOOPBACK}:{node.client_port}")
            advertised.append(f"CLIENT://{LOOPBACK}:{node.client_port}")
            protocols.append(f"CLIENT:{self.security.protocol}")
            props["sasl.enabled.mechanisms"] = SCRAM_MECHANISM
            props["listener.name.client.sasl.enabled.mechanisms"] = SCRAM_MECHANISM
            props[f"listener.name.client.{SCRAM_MECHANISM.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
            if self.security.tls:
                props["listener.name.client.ssl.keystore.type"] = "PEM"
                props["listener.name.client.ssl.keystore.location"] = str(
                    self.state_dir / "tls" / "broker.pem"
                )
        props["listeners"] = ",".join(listeners)
        props["advertised.listeners"] = ",".join(advertised)
        props["listener.security.protocol.map"] = ",".join(protocols)
        props.update(overrides)
        return props

    def _configure(self, overrides: Mapping[str, str]) -> None:
        (self.state_dir / "kafka-log4j2.properties").write_text(_LOG4J2)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            props = self._properties(node, overrides)
            node.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self, main: str, *args: str, heap: str = "-Xmx256m") -> list[str]:
        java = java_executable()
        if java is None:
            raise KafkaRuntimeError("no java on PATH (Apache Kafka needs Java 17 or newer)")
        return [
            java,
            heap,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.state_dir / 'kafka-log4j2.properties'}",
            "-cp",
            self.jars.classpath,
            main,
            *args,
        ]

    def _format(self) -> None:
        """Format each node's storage with one cluster id (a formatted node is left as is)."""
        if all((node.data_dir / "log" / "meta.properties").exists() for node in self.nodes):
            return
        cluster_id = _kafka_uuid()
        scram: list[str] = []
        if self.security is not None:
            user, password = self.security.username, self.security.password
            scram = ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        running = []
        for node in self.nodes:
            cmd = self._java(
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(node.config_path),
                *scram,
            )
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            running.append((node, proc))
        for node, proc in running:  # one JVM per node, side by side: ~1 s each
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise KafkaRuntimeError(
                    f"formatting kafka node {node.node_id} failed: "
                    f"{out.decode(errors='replace').strip()[-2000:]}"
                )

    # -- running --------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Start every node that is not running and wait until all are in the cluster."""
        for node in self.nodes:
            if not node.alive():
                self._spawn(node)
        self.wait_ready(timeout)

    def start_node(self, node_id: int, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        node = self.node(node_id)
        if not node.alive():
            self._spawn(node)
        self.wait_ready(timeout)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def _spawn(self, node: KafkaNode) -> None:
        cmd = self._java("kafka.Kafka", str(node.config_path), heap=HEAP)
        cmd.insert(2, "-Xms128m")
        cmd.insert(3, f"-Dkafka.logs.dir={node.data_dir / 'logs'}")
        with node.log_path.open("ab") as out:
            # Its own session: a Ctrl-C in the terminal reaches the launcher, which then
            # stops the broker last, after the clients.
            node.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until a metadata request lists every running node as a broker."""
        from confluent_kafka.admin import AdminClient

        running = [n for n in self.nodes if n.alive()]
        admin = AdminClient(
            {"bootstrap.servers": ",".join(n.internal for n in running), "log_level": 0}
        )
        deadline = time.monotonic() + timeout
        wanted = {n.node_id for n in running}
        seen: set[int] = set()
        while time.monotonic() < deadline:
            for node in running:
                if not node.alive():
                    raise KafkaRuntimeError(
                        f"kafka node {node.node_id} exited during start-up: {_tail(node.log_path)}"
                    )
            with contextlib.suppress(Exception):
                seen = set(admin.list_topics(timeout=2).brokers)
                if wanted <= seen:
                    return
            time.sleep(0.1)
        raise KafkaRuntimeError(
            f"kafka not ready after {timeout:.0f}s (brokers seen {sorted(seen)} of "
            f"{sorted(wanted)}); see {self.log_path}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM (a clean shutdown) to every node, SIGKILL to those still up after `timeout`."""
        self._signal_all(self.nodes, sig)
        self._reap(self.nodes, timeout)

    def kill(self, node_id: int) -> None:
        """kill -9 one node (chaos)."""
        node = self.node(node_id)
        self._signal_all([node], signal.SIGKILL)
        self._reap([node], 5)

    def stop_node(self, node_id: int, timeout: float = STOP_GRACE_SECONDS) -> None:
        node = self.node(node_id)
        self._signal_all([node], signal.SIGTERM)
        self._reap([node], timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    @staticmethod
    def _signal_all(nodes: Iterable[KafkaNode], sig: int) -> None:
        for node in nodes:
            if node.alive() and node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(sig)

    @staticmethod
    def _reap(nodes: Iterable[KafkaNode], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("kafka node %d ignored SIGTERM; killing it", node.node_id)
                node.process.kill()
                node.process.wait(5)

    # -- chaos helpers --------------------------------------------------------------------

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition → leader node id, from a metadata request."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.internal_bootstrap, "log_level": 0})
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        return {p: info.leader for p, info in meta.partitions.items()}

    def under_replicated(self, topic: str) -> int:
        """Partitions of `topic` whose in-sync replicas are fewer than their replicas."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.internal_bootstrap, "log_level": 0})
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        return sum(1 for info in meta.partitions.values() if len(info.isrs) < len(info.replicas))


def _remembered(state_dir: Path, security: KafkaSecurity) -> KafkaSecurity:
    """The SCRAM user is written into the storage at format time: a state dir formatted
    earlier keeps its credentials (saved beside it, mode 600), or nobody could log in."""
    saved = state_dir / "kafka-scram.json"
    if saved.exists():
        data = json.loads(saved.read_text())
        return KafkaSecurity(data["username"], data["password"], tls=security.tls)
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"username": security.username, "password": security.password}, out)
    return security


def _kafka_uuid() -> str:
    """A cluster id as Kafka's `Uuid.randomUuid()` prints it: 16 bytes, URL-safe base64."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like a flag
            return text


def _write_tls_material(state_dir: Path) -> Path:
    """A throwaway CA and a 127.0.0.1 broker certificate; returns the CA file for clients."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    tls = state_dir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    ca_file = tls / "ca.pem"
    broker_pem = tls / "broker.pem"
    if ca_file.exists() and broker_pem.exists():
        return ca_file
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK, "localhost")
    # Kafka's PEM key store reads PKCS#8 keys only; trustme writes the traditional format.
    key: Any = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    broker_pem.write_bytes(pkcs8 + chain)
    broker_pem.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
