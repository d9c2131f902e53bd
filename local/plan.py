"""What the local launcher runs: the options, one `Instance` per process, and how to run it.

`plan` turns `LaunchOptions` into named instances (`consumer-2`) on free loopback ports;
`command_for` and `process_env` give honcho each one's shell command and environment; and
`render_prometheus` writes the scrape configuration for exactly those instances (and where
Prometheus sends its alerts). Nothing here starts anything.
"""

from __future__ import annotations

import json
import shlex
import shutil
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from local import infra

LOOPBACK = infra.LOOPBACK
KAFKA_SECURITY = ("plaintext", "sasl", "sasl-ssl")
ROLES = ("api", "warehouse", "relay", "consumer", "scheduler", "console")
# Roles that serve HTTP on their port (the others serve only /metrics there).
HTTP_ROLES = frozenset({"api", "warehouse", "console"})
# API replicas share one port (SO_REUSEPORT); each serves its metrics on a port of its own.
SCALABLE = frozenset({"api", "relay", "consumer", "scheduler"})
COMMANDS = {
    "api": "steadfast-api",
    "warehouse": "steadfast-warehouse",
    "relay": "steadfast-relay",
    "consumer": "steadfast-consumer",
    "scheduler": "steadfast-scheduler",
    "console": "steadfast-console",
}
# Prometheus job names follow each process's `service.name` in the logs.
JOBS = {
    "api": "reservation-api",
    "warehouse": "warehouse-mock",
    "relay": "outbox-relay",
    "consumer": "reservation-consumer",
    "scheduler": "retry-scheduler",
    "console": "ops-console",
}
LOCAL_DIR = Path(__file__).parent
PROMETHEUS_TEMPLATE = LOCAL_DIR / "prometheus.yml"
ALERT_RULES = LOCAL_DIR / "alerts.yml"


class LaunchError(RuntimeError):
    """The stack could not be started (bad options, missing infrastructure)."""


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    state_dir: Path
    broker: str = "kafka"
    kafka_nodes: int = 1
    kafka_security: str = "plaintext"
    """plaintext, sasl (SASL_PLAINTEXT + SCRAM) or sasl-ssl (the same over TLS)."""
    scale: Mapping[str, int] = field(default_factory=dict)
    only: frozenset[str] | None = None
    prometheus: bool = True
    commands: Mapping[str, str] = field(default_factory=dict)
    """Replacement shell commands by role, for tests and debugging."""

    def __post_init__(self) -> None:
        if self.broker not in infra.BROKERS:
            raise LaunchError(f"unknown broker {self.broker!r}; choose {', '.join(infra.BROKERS)}")
        if self.kafka_nodes not in (1, 3):
            raise LaunchError(f"--kafka-nodes {self.kafka_nodes}: a local cluster has 1 or 3")
        if self.kafka_security not in KAFKA_SECURITY:
            raise LaunchError(f"--kafka-security: choose {', '.join(KAFKA_SECURITY)}")
        if self.broker != "kafka" and (self.kafka_nodes != 1 or self.kafka_security != "plaintext"):
            raise LaunchError("--kafka-nodes and --kafka-security need the Apache Kafka broker")
        unknown = (set(self.scale) | set(self.only or ()) | set(self.commands)) - set(ROLES)
        if unknown:
            raise LaunchError(f"unknown process {sorted(unknown)}; choose from {', '.join(ROLES)}")
        for role, count in self.scale.items():
            if count < 0 or (count > 1 and role not in SCALABLE):
                raise LaunchError(
                    f"--scale {role}={count}: only {', '.join(sorted(SCALABLE))} run more than once"
                )

    def count(self, role: str) -> int:
        if self.only is not None and role not in self.only:
            return 0
        return self.scale.get(role, 1)


@dataclass(frozen=True)
class Instance:
    name: str
    """`role-N`: the honcho process name, the pid key and STEADFAST_INSTANCE_ID."""
    role: str
    port: int
    """The api/warehouse/console HTTP port, else the Prometheus metrics port."""
    metrics_port: int | None = None
    """An API replica's own metrics port (its HTTP port is shared with the others)."""

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def metrics_address(self) -> str:
        """host:port Prometheus scrapes: the replica's own metrics port, else its port."""
        return f"{LOOPBACK}:{self.metrics_port or self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics"


def plan(options: LaunchOptions) -> list[Instance]:
    instances: list[Instance] = []
    for role in ROLES:
        count = options.count(role)
        if role == "api" and count > 1:
            shared = infra.free_port()
            instances += [
                Instance(f"api-{n}", role, shared, metrics_port=infra.free_port())
                for n in range(1, count + 1)
            ]
        else:
            instances += [
                Instance(f"{role}-{n}", role, infra.free_port()) for n in range(1, count + 1)
            ]
    return instances


def command_for(role: str, overrides: Mapping[str, str]) -> str:
    """A shell command for honcho; `exec` makes the recorded pid the service's own.

    A replacement command runs as given (it may be a compound shell command), so its pid is
    the shell's; honcho signals the whole process group either way.
    """
    if role in overrides:
        return overrides[role]
    script = Path(sys.executable).parent / COMMANDS[role]
    exe = str(script) if script.exists() else (shutil.which(COMMANDS[role]) or COMMANDS[role])
    return f"exec {shlex.quote(exe)}"


@dataclass(frozen=True, kw_only=True)
class Links:
    """Where the processes find each other (None: not part of this stack)."""

    api: str | None = None
    warehouse: str | None = None
    prometheus: str | None = None
    alertmanager: str | None = None


def process_env(
    base: Mapping[str, str], shared: Mapping[str, str], inst: Instance, links: Links
) -> dict[str, str]:
    """Shared launcher values, the user's exported STEADFAST_* on top, then forced ports/ids."""
    env = {"PYTHONUNBUFFERED": "1", "STEADFAST_LOG_LEVEL": "INFO"}
    if links.warehouse and inst.role in {"consumer", "scheduler"}:
        env["STEADFAST_WAREHOUSE__BASE_URL"] = links.warehouse
    env.update(base)
    env.update(shared)
    env.pop("STEADFAST_METRICS_PORT", None)
    env["STEADFAST_INSTANCE_ID"] = inst.name
    env["STEADFAST_HOST"] = LOOPBACK
    if inst.role == "api":
        env["STEADFAST_PORT"] = str(inst.port)
        if inst.metrics_port is not None:
            env["STEADFAST_REUSE_PORT"] = "true"
            env["STEADFAST_METRICS_PORT"] = str(inst.metrics_port)
    elif inst.role == "warehouse":
        env["STEADFAST_WAREHOUSE_PORT"] = str(inst.port)
    elif inst.role == "console":
        env["STEADFAST_CONSOLE_PORT"] = str(inst.port)
        # The console shows what this stack runs, whatever the user's shell exported.
        for name, url in (
            ("STEADFAST_API_URL", links.api),
            ("STEADFAST_WAREHOUSE_URL", links.warehouse),
            ("STEADFAST_PROMETHEUS_URL", links.prometheus),
            ("STEADFAST_ALERTMANAGER_URL", links.alertmanager),
        ):
            if url:
                env[name] = url
            else:
                env.pop(name, None)
    else:
        env["STEADFAST_METRICS_PORT"] = str(inst.port)
    return env


def render_prometheus(
    instances: list[Instance],
    scrape_interval: str = "5s",
    *,
    rules: Path | None = ALERT_RULES,
    alertmanager: str | None = None,
) -> str:
    """The scrape config of `instances`; `rules` evaluated, firing alerts sent to the
    Alertmanager at `alertmanager` (host:port) when given."""

    def static_configs(role: str) -> str:
        return json.dumps(
            [
                {"targets": [i.metrics_address], "labels": {"instance_id": i.name}}
                for i in instances
                if i.role == role
            ]
        )

    rule_files = [str(rules)] if rules is not None and rules.exists() else []
    targets = [{"targets": [alertmanager]}] if alertmanager else []
    return string.Template(PROMETHEUS_TEMPLATE.read_text()).substitute(
        scrape_interval=scrape_interval,
        rule_files=json.dumps(rule_files),
        alertmanager_static_configs=json.dumps(targets),
        **{f"{role}_static_configs": static_configs(role) for role in ROLES},
    )
