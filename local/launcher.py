"""The local launcher behind `make run`: infrastructure, then every process under honcho.

Order of work: find or start PostgreSQL and a broker (`local.infra`), migrate the service
database, create the topic, pick free loopback ports (`local.plan`), write
`<state>/run/endpoints.json` (mode 600, `local.endpoints`), then run the processes with
honcho's `Manager` (`local.manager`) and wait for them to answer. Prometheus and
Alertmanager (`local.alertmanager`) run beside them when installed; Alertmanager's
default route is the ops console's webhook. Ctrl-C or SIGTERM stops
every child (honcho: SIGTERM, then SIGKILL after 4 s), then the broker and an embedded
PostgreSQL side by side (3 s each at most), so a stop takes under 10 s. If a child dies on
its own, honcho stops the rest and the launcher names the one that died and exits
non-zero. Should the launcher itself be killed (`kill -9`), its reaper (`local.reaper`)
stops everything it had started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from honcho.printer import Printer
from sqlalchemy.engine import make_url

from local import alertmanager, infra
from local.endpoints import EndpointsFile
from local.manager import LockedPrinter, ProcessManager
from local.plan import (
    ALERT_RULES,
    HTTP_ROLES,
    LOOPBACK,
    Instance,
    LaunchError,
    LaunchOptions,
    Links,
    command_for,
    plan,
    process_env,
    render_prometheus,
)
from local.reaper import RUN_ID_VARIABLE, Reaper

log = logging.getLogger(__name__)

SERVICE_DATABASE = "steadfast"
READY_POLL_SECONDS = 0.25
BROKER_STOP_SECONDS = 3.0
POSTGRES_STOP_SECONDS = 3


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class Launcher:
    def __init__(self, options: LaunchOptions, printer: Printer | None = None) -> None:
        self.options = options
        self.printer = printer if printer is not None else LockedPrinter(sys.stdout)
        self.state_dir = options.state_dir.resolve()
        self.run_dir = self.state_dir / "run"
        self.endpoints = EndpointsFile(self.run_dir / "endpoints.json")
        # pid and kernel start time of every process this launcher owns, to clean up after a
        # launcher that was killed with -9 without ever touching a recycled pid.
        self.owned = EndpointsFile(self.run_dir / "owned.json")
        self._done = threading.Event()
        self._waiter: threading.Thread | None = None

    def run(self) -> int:
        """Start everything, block until it stops; 0 on a requested stop, 1 otherwise."""
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        previous_hup = signal.signal(signal.SIGHUP, _raise_interrupt)
        try:
            with contextlib.ExitStack() as cleanup:
                cleanup.callback(self.endpoints.remove)
                return self._run(cleanup)
        except KeyboardInterrupt:
            log.info("interrupted during start-up; stopped")
            return 0
        except (LaunchError, infra.InfraError) as exc:
            log.error("cannot start the stack: %s", exc)
            return 2
        finally:
            self._done.set()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGHUP, previous_hup)

    def _run(self, cleanup: contextlib.ExitStack) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        self._reap_leftovers()
        cleanup.callback(self.owned.remove)
        self._own("launcher", os.getpid())
        # Everything started from here on carries the run id (`local.cli` tagged this
        # process); the reaper stops it all should this process die without cleaning up.
        reaper = self._reaper = Reaper.start(os.environ[RUN_ID_VARIABLE])
        self._own("reaper", reaper.pid)
        env = dict(os.environ)
        database_url, pg = self._postgres(env.get("STEADFAST_DATABASE_URL"))
        stoppers: list[tuple[str, Callable[[], None]]] = []
        cleanup.callback(self._stop_infra, stoppers)
        if pg is not None and pg.embedded:
            stoppers.append(("embedded postgres", lambda: pg.stop(POSTGRES_STOP_SECONDS)))
        bootstrap, broker = self._broker(env)
        if broker is not None:
            stoppers.append(
                (f"{broker.kind} broker", lambda: broker.stop(signal.SIGTERM, BROKER_STOP_SECONDS))
            )
        self._prepare(database_url, bootstrap, env, broker)

        instances = plan(self.options)
        if not instances:
            raise LaunchError("nothing to run (check --only / --scale)")
        token = env.get("STEADFAST_ADMIN_TOKEN") or secrets.token_urlsafe(32)
        shared = {
            "STEADFAST_DATABASE_URL": database_url,
            "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STEADFAST_ADMIN_TOKEN": token,
            **(broker.client_env() if broker is not None else {}),
        }
        by_role = {i.role: i for i in instances if i.role in HTTP_ROLES}
        warehouse_url = by_role["warehouse"].base_url if "warehouse" in by_role else None
        console_url = by_role["console"].base_url if "console" in by_role else None
        prometheus = self._prometheus_port()
        alerts = self._alertmanager_port() if prometheus else None
        links = Links(
            api=by_role["api"].base_url if "api" in by_role else None,
            warehouse=warehouse_url,
            prometheus=f"http://{LOOPBACK}:{prometheus}" if prometheus else None,
            alertmanager=f"http://{LOOPBACK}:{alerts}" if alerts else None,
        )
        extra = (["prometheus"] if prometheus else []) + (["alertmanager"] if alerts else [])

        self.endpoints.update(
            launcher_pid=os.getpid(),
            state_dir=str(self.state_dir),
            ready=False,
            reservation_api=by_role["api"].base_url if "api" in by_role else None,
            warehouse_mock=warehouse_url,
            console=console_url,
            admin_token=token,
            database_url=database_url,
            kafka_bootstrap_servers=bootstrap,
            kafka_internal_bootstrap_servers=broker.internal_bootstrap if broker else bootstrap,
            kafka_client_config=broker.client_config() if broker else {},
            kafka_nodes=broker.size if isinstance(broker, infra.KafkaCluster) else 1,
            broker=broker.kind if broker else "external",
            metrics={i.name: i.metrics_url for i in instances},
            prometheus=links.prometheus,
            alertmanager=links.alertmanager,
            processes=[i.name for i in instances] + extra,
            pids={},
            exited={},
            infra_pids={"reaper": reaper.pid, **(broker.pids() if broker else {})},
        )

        manager = ProcessManager(self.printer, self._on_event)
        self.printer.width = max(self.printer.width, len("launcher"))
        self._manager = manager
        for inst in instances:
            manager.add_process(
                inst.name,
                command_for(inst.role, self.options.commands),
                env=process_env(env, shared, inst, links),
                cwd=str(self.state_dir),
            )
        if prometheus:
            manager.add_process(
                "prometheus",
                self._prometheus_command(instances, prometheus, env, alerts),
                env=env,
                cwd=str(self.state_dir),
            )
        if alerts:
            manager.add_process(
                "alertmanager",
                self._alertmanager_command(alerts, token, console_url, env),
                env=env,
                cwd=str(self.state_dir),
            )
        self._checks = self._ready_checks(instances, prometheus, alerts)
        names = self.endpoints.data["processes"]
        log.info("starting %d processes: %s", len(names), ", ".join(names))
        # A closed terminal sends SIGHUP to the whole foreground group, honcho's per-child
        # relay processes included; were they to die, its loop would wait forever. So they
        # (forked inside loop()) inherit SIGHUP ignored, and the launcher handles it like
        # SIGTERM from its first event read on (see _record).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            manager.loop()  # installs honcho's own SIGINT/SIGTERM handlers
        except BaseException:
            self._stop_children()
            raise
        self._done.set()
        self.endpoints.update(ready=False)
        dropped = getattr(self.printer, "dropped", 0)
        if dropped:
            log.info("%d lines the children printed while stopping were not shown", dropped)
        if manager.stop_requested:
            log.info("all processes stopped")
            return 0
        name, rc = manager.first_exit or ("?", manager.returncode)
        log.error("process %s exited (rc=%s); honcho stopped the others", name, rc)
        return 1

    # -- infrastructure ---------------------------------------------------------------------

    def _postgres(self, explicit: str | None) -> tuple[str, infra.Postgres | None]:
        if explicit:
            if not infra.postgres_reachable(explicit):
                raise LaunchError(f"STEADFAST_DATABASE_URL is not reachable: {_safe(explicit)}")
            log.info("postgres: using STEADFAST_DATABASE_URL %s", _safe(explicit))
            return explicit, None
        pg = infra.find_or_start_postgres(self.state_dir)
        where = f"embedded, data in {pg.data_dir}" if pg.embedded else "found on 127.0.0.1:5432"
        log.info("postgres: %s (%s)", _safe(pg.url), where)
        return infra.ensure_database(pg.url, SERVICE_DATABASE), pg

    def _broker(self, env: Mapping[str, str]) -> tuple[str, infra.AnyBroker | None]:
        explicit = env.get("STEADFAST_KAFKA_BOOTSTRAP_SERVERS")
        if explicit:
            log.info("broker: using STEADFAST_KAFKA_BOOTSTRAP_SERVERS %s", explicit)
            return explicit, None
        security = (
            infra.KafkaSecurity(tls=self.options.kafka_security == "sasl-ssl")
            if self.options.kafka_security != "plaintext"
            else None
        )
        broker = infra.start_broker(
            self.options.broker,
            self.state_dir,
            nodes=self.options.kafka_nodes,
            security=security,
        )
        log.info("broker: %s on %s (log %s)", broker.kind, broker.bootstrap, broker.log_path)
        for name, pid in broker.pids().items():
            self._own(name, pid)
        return broker.bootstrap, broker

    def _stop_infra(self, stoppers: list[tuple[str, Callable[[], None]]]) -> None:
        """Stop the broker and PostgreSQL side by side: the stop's budget is 10 s in all."""
        threads = [
            threading.Thread(target=self._stop_quietly, args=(what, stop), name=f"stop {what}")
            for what, stop in stoppers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _prepare(
        self,
        database_url: str,
        bootstrap: str,
        env: Mapping[str, str],
        broker: infra.AnyBroker | None,
    ) -> None:
        import migrations
        from services.reservation.settings import ORDER_EVENTS_TOPIC, KafkaConfig

        # The processes read STEADFAST_KAFKA__TOPIC/__PARTITIONS too (tests give each stack
        # its own topic on a shared broker), so create the topic they will use.
        topic = env.get("STEADFAST_KAFKA__TOPIC") or ORDER_EVENTS_TOPIC
        partitions = int(env.get("STEADFAST_KAFKA__PARTITIONS") or KafkaConfig().partitions)
        started = time.monotonic()
        migrations.upgrade(database_url)
        client_config = broker.client_config() if broker is not None else _client_config()
        infra.ensure_topics(bootstrap, {topic: partitions}, client_config=client_config)
        log.info(
            "database migrated, topic %s (%d partitions) ready in %.1fs",
            topic,
            partitions,
            time.monotonic() - started,
        )

    def _stop_quietly(self, what: str, stop: Callable[..., None], *args: Any) -> None:
        try:
            stop(*args)
            log.info("%s stopped", what)
        except Exception as exc:
            log.warning("could not stop %s: %s", what, exc)

    def _own(self, name: str, pid: int) -> None:
        self.owned.update(**{name: [pid, _start_time(pid)]})

    def _reap_leftovers(self) -> None:
        """A launcher killed with -9 leaves its broker and children behind; stop them."""
        try:
            old: dict[str, list[Any]] = json.loads(self.owned.path.read_text())
        except (OSError, ValueError):
            old = {}
        alive = {
            name: int(pid)
            for name, (pid, started) in old.items()
            if started is not None and _start_time(int(pid)) == started
        }
        if "launcher" in alive:
            raise LaunchError(
                f"another launcher (pid {alive['launcher']}) is running on {self.state_dir}"
            )
        for name, pid in alive.items():
            log.warning("stopping %s (pid %d) left over from an earlier run", name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # every one leads its own session
            _wait_gone(pid, 5)
        self.owned.remove()
        self.endpoints.remove()

    # -- prometheus ---------------------------------------------------------------------------

    def _prometheus_port(self) -> int | None:
        if not self.options.prometheus:
            return None
        if shutil.which("prometheus") is None:
            log.info(
                "prometheus not on PATH, not started "
                "(apt-get install prometheus, or pass --no-prometheus to silence this)"
            )
            return None
        return infra.free_port()

    def _prometheus_command(
        self,
        instances: list[Instance],
        port: int,
        env: Mapping[str, str],
        alerts: int | None,
    ) -> str:
        config = self.run_dir / "prometheus.yml"
        config.write_text(
            render_prometheus(
                instances,
                alertmanager.Timing.from_env(env).scrape_interval,
                rules=alertmanager.rules_file(env, ALERT_RULES),
                alertmanager=f"{LOOPBACK}:{alerts}" if alerts else None,
            )
        )
        storage = self.state_dir / "prometheus"
        storage.mkdir(exist_ok=True)
        args = [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ]
        return "exec " + shlex.join(args)

    def _alertmanager_port(self) -> int | None:
        if alertmanager.binary() is None:
            log.info(
                "alertmanager not on PATH, not started (apt-get install prometheus-alertmanager)"
            )
            return None
        return infra.free_port()

    def _alertmanager_command(
        self, port: int, token: str, console_url: str | None, env: Mapping[str, str]
    ) -> str:
        config = alertmanager.write_config(
            self.run_dir,
            token=token,
            console_url=console_url,
            timing=alertmanager.Timing.from_env(env),
        )
        storage = self.state_dir / "alertmanager"
        storage.mkdir(exist_ok=True)
        return alertmanager.command(alertmanager.binary() or "alertmanager", config, storage, port)

    # -- events and readiness ---------------------------------------------------------------

    def _hangup(self, signum: int, frame: object) -> None:
        log.info("SIGHUP received (terminal closed?); stopping")
        self._manager.terminate()

    def _stop_children(self) -> None:
        """honcho's loop failed: stop its children ourselves (each leads its own session)."""
        pids = dict(self.endpoints.data.get("pids", {}))
        log.error("the process manager failed; stopping %s", ", ".join(pids) or "nothing")
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        for pid in pids.values():
            _wait_gone(pid, 5)

    def _on_event(self, message: Any) -> None:
        try:
            self._record(message)
        except Exception:
            # Bookkeeping (endpoints.json) must never break honcho's loop.
            log.exception("could not record process event %r", message)

    def _record(self, message: Any) -> None:
        if message is None:
            if self._waiter is None:  # first read: honcho has forked every child by now
                signal.signal(signal.SIGHUP, self._hangup)
                self._waiter = threading.Thread(
                    target=self._wait_ready, name="ready-waiter", daemon=True
                )
                self._waiter.start()
            return
        if message.type == "start":
            self._own(message.name, message.data["pid"])
            self.endpoints.set_in("pids", message.name, message.data["pid"])
        elif message.type == "stop":
            rc = message.data["returncode"]
            self.endpoints.set_in("exited", message.name, rc)
            manager = self._manager
            if manager.first_exit is None and not manager.stop_requested:
                manager.first_exit = (message.name, rc)
                log.error("process %s died (rc=%s); stopping the others", message.name, rc)

    def _ready_checks(
        self, instances: list[Instance], prometheus: int | None, alerts: int | None
    ) -> dict[str, str]:
        checks: dict[str, str] = {}
        for inst in instances:
            if inst.role == "api":
                # A replica's own metrics port proves that replica's process is serving (it
                # opens before uvicorn's lifespan); /ready on the shared port proves the
                # database answers, from whichever replica the kernel picks.
                checks[inst.name] = (
                    inst.metrics_url if inst.metrics_port else f"{inst.base_url}/ready"
                )
                if inst.metrics_port:
                    checks["api"] = f"{inst.base_url}/ready"
            elif inst.role in {"warehouse", "console"}:
                checks[inst.name] = f"{inst.base_url}/health"
            else:
                checks[inst.name] = inst.metrics_url
        if prometheus:
            checks["prometheus"] = f"http://{LOOPBACK}:{prometheus}/-/ready"
        if alerts:
            checks["alertmanager"] = f"http://{LOOPBACK}:{alerts}/-/ready"
        return checks

    def _wait_ready(self) -> None:
        pending = dict(self._checks)
        started = last_note = time.monotonic()
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while pending and not self._done.is_set():
                for name, url in list(pending.items()):
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(url).status_code == 200:
                            del pending[name]
                if pending and time.monotonic() - last_note > 15:
                    last_note = time.monotonic()
                    log.info("still waiting for: %s", ", ".join(sorted(pending)))
                self._done.wait(READY_POLL_SECONDS)
        if pending or self._done.is_set():
            return
        self.endpoints.update(ready=True)
        log.info("stack ready in %.1fs\n%s", time.monotonic() - started, self._summary())

    def _summary(self) -> str:
        data = self.endpoints.data
        rows = []
        if data["console"]:
            rows.append(("ops console", f"{data['console']}   (sign in with the admin token)"))
        if data["reservation_api"]:
            api = data["reservation_api"]
            rows.append(("reservation API", f"{api}   (docs {api}/docs)"))
        if data["warehouse_mock"]:
            rows.append(("warehouse mock", data["warehouse_mock"]))
        if data["prometheus"]:
            rows.append(("prometheus", data["prometheus"]))
        if data["alertmanager"]:
            rows.append(("alertmanager", data["alertmanager"]))
        rows += [(f"metrics {name}", url) for name, url in data["metrics"].items()]
        rows += [
            ("database", _safe(data["database_url"])),
            ("kafka", f"{data['kafka_bootstrap_servers']} ({data['broker']})"),
            ("admin token", f"in {self.endpoints.path} (mode 600)"),
        ]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def _client_config() -> dict[str, str]:
    """librdkafka settings for an external cluster, from the processes' own variables."""
    from services.common.kafka import KafkaClientEnv

    return KafkaClientEnv().kafka_security.librdkafka()


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def _start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot): a pid plus this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (field 2, which may contain spaces): state, ..., and
    # starttime (field 22). A zombie has exited already; it only waits for its parent.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _wait_gone(pid: int, timeout: float) -> None:
    started = _start_time(pid)
    if started is None:
        return
    deadline = time.monotonic() + timeout
    while _start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.05)
    if _start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
