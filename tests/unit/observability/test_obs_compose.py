"""local/docker-compose.yml, checked offline (no Docker engine here).

Syntax is docker-compose's own (`config -q`, 1.29 from Debian). References are ours: bind
mounts exist, each service gets every STEADFAST_* variable its Settings class needs and
none it ignores, the Settings class builds from exactly that environment, Prometheus
scrapes services that exist on the ports they listen on, Grafana and Filebeat find what
they are given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from observability_queries import ROOT
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from local import alertmanager
from local.kafka_jars import KAFKA_VERSION
from services.common.settings import ENV_PREFIX, AdminAuth
from services.console.settings import ConsoleSettings
from services.reservation.settings import (
    ORDER_EVENTS_TOPIC,
    ApiSettings,
    ConsumerSettings,
    KafkaConfig,
    RelaySettings,
    SchedulerSettings,
)
from services.warehouse_mock.settings import WarehouseMockSettings

LOCAL = ROOT / "local"
COMPOSE = LOCAL / "docker-compose.yml"
PROMETHEUS_CONFIG = LOCAL / "prometheus.compose.yml"
GRAFANA_PROVIDER = ROOT / "grafana" / "provisioning" / "dashboards" / "steadfast.yml"
FILEBEAT = ROOT / "elk" / "filebeat" / "filebeat.yml"

TEST_ENV = {"STEADFAST_ADMIN_TOKEN": "compose-test-token"}
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "reservation-api": ApiSettings,
    "outbox-relay": RelaySettings,
    "reservation-consumer": ConsumerSettings,
    "retry-scheduler": SchedulerSettings,
    "warehouse-mock": WarehouseMockSettings,
    "ops-console": ConsoleSettings,
}
# Prometheus job names (the launcher's too) are the compose service names.
JOBS = set(SERVICE_SETTINGS)
METRICS_PORT_SERVICES = {"outbox-relay", "reservation-consumer", "retry-scheduler"}
FIXED_PORTS = {
    "reservation-api": 8000,
    "warehouse-mock": 8081,
    "prometheus": 9090,
    "alertmanager": 9093,
    "ops-console": 8090,
    "grafana": 3000,
    "kibana": 5601,
    "jaeger": 16686,
}
IMAGES = {
    # The same Apache Kafka the launcher runs from Maven Central (KRaft, no ZooKeeper).
    "kafka": f"apache/kafka:{KAFKA_VERSION}",
    "postgres": "postgres:16",
    "elasticsearch": "docker.elastic.co/elasticsearch/elasticsearch:8.",
    "logstash": "docker.elastic.co/logstash/logstash:8.",
    "kibana": "docker.elastic.co/kibana/kibana:8.",
    "filebeat": "docker.elastic.co/beats/filebeat:8.",
    "prometheus": "prom/prometheus:",
    "alertmanager": "prom/alertmanager:v0.25",
    "grafana": "grafana/grafana:",
    "jaeger": "jaegertracing/all-in-one:1.",
}
# Host paths outside the repository that Filebeat needs to read container logs.
HOST_PATHS = {"/var/lib/docker/containers", "/var/run/docker.sock"}
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?message} against `env`."""
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in env:
            return env[name]
        if op and "?" in op:
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return _VAR.sub(sub, value)


def compose() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return config


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def service_env(name: str) -> dict[str, str]:
    env = services()[name].get("environment", {})
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {key: str(interpolate(value, TEST_ENV)) for key, value in env.items()}


def settings_env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """The variables a pydantic-settings class reads (nested models use `__`)."""
    names = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        names.add(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= settings_env_names(annotation, f"{name}__")
    return names


def loopback_defaults(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """Variables whose default points at 127.0.0.1: wrong in any container."""
    names = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        default = field.default
        if isinstance(default, BaseModel):
            names |= loopback_defaults(type(default), f"{name}__")
            continue
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, str) and "127.0.0.1" in default:
            names.add(name)
    return names


def required_env(name: str) -> set[str]:
    cls = SERVICE_SETTINGS[name]
    required = loopback_defaults(cls)
    if issubclass(cls, AdminAuth):
        required.add("STEADFAST_ADMIN_TOKEN")
    if name in METRICS_PORT_SERVICES:
        required.add("STEADFAST_METRICS_PORT")
    return required


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


# --------------------------------------------------------------------------- shape


def test_compose_has_the_whole_stack() -> None:
    all_services = services()
    for name, image in IMAGES.items():
        assert all_services[name]["image"].startswith(image), name
    assert set(SERVICE_SETTINGS) | {"migrate", "kafka-init", "kibana-setup"} <= set(all_services)


def test_our_services_export_traces_to_jaeger() -> None:
    for name in [n for n in SERVICE_SETTINGS if n != "ops-console"]:
        endpoint = service_env(name).get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        assert "http://jaeger:4318" in endpoint, f"{name}: {endpoint!r}"


def test_our_services_build_from_the_root_dockerfile_and_run_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert (ROOT / "Dockerfile").is_file()
    for name in [*SERVICE_SETTINGS, "migrate"]:
        service = services()[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert build["dockerfile"] == "Dockerfile", name
        assert service["command"][0] in scripts, f"{name}: {service['command']}"


def test_dockerfile_runs_as_a_non_root_user_on_python_311_slim() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert "pip install ." in dockerfile


def test_bind_mounts_exist() -> None:
    for name, service in services().items():
        for source, _ in bind_mounts(service):
            if source.startswith("/"):
                assert source in HOST_PATHS, f"{name}: unexpected host path {source}"
                continue
            path = (COMPOSE.parent / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} leaves the repository"
            assert path.exists(), f"{name}: {source} does not exist"


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes", {}))
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def test_fixed_ports_are_published_on_loopback() -> None:
    for name, port in FIXED_PORTS.items():
        assert f"127.0.0.1:{port}:{port}" in services()[name].get("ports", []), name


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_service_sets_every_variable_its_settings_need(name: str) -> None:
    missing = required_env(name) - set(service_env(name))
    assert not missing, f"{name} keeps container-hostile defaults for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_service_sets_no_variable_its_settings_ignore(name: str) -> None:
    cls = SERVICE_SETTINGS[name]
    ignored = {var for var in service_env(name) if var.startswith(ENV_PREFIX)}
    ignored -= settings_env_names(cls)
    hint = ""
    if "STEADFAST_HOST" in ignored and name in METRICS_PORT_SERVICES:
        hint = (
            " (its metrics endpoint binds 127.0.0.1, so Prometheus in another container "
            "cannot scrape it: the process must read STEADFAST_HOST for its metrics server)"
        )
    assert not ignored, f"{cls.__name__} does not read {sorted(ignored)}{hint}"


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_settings_build_from_the_compose_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in service_env(name).items():
        monkeypatch.setenv(key, value)
    settings = SERVICE_SETTINGS[name]()
    dumped = settings.model_dump_json()  # secrets dump masked, so check the URL apart
    assert "127.0.0.1" not in dumped, dumped
    database_url = getattr(settings, "database_url", None)
    if database_url is not None:
        assert "@postgres:5432/" in database_url.get_secret_value()
    if name in METRICS_PORT_SERVICES:
        assert settings.metrics_port == 9100  # type: ignore[attr-defined]


def test_migrate_gets_the_database_url() -> None:
    assert service_env("migrate")["STEADFAST_DATABASE_URL"].startswith("postgresql://")


def test_admin_token_has_no_default() -> None:
    for name in ("reservation-api", "warehouse-mock"):
        raw = services()[name]["environment"]["STEADFAST_ADMIN_TOKEN"]
        assert raw.startswith("${STEADFAST_ADMIN_TOKEN:?"), name


def test_topic_is_created_with_the_consumers_partition_count() -> None:
    command = [str(part) for part in services()["kafka-init"]["command"]]
    assert command[command.index("--topic") + 1] == ORDER_EVENTS_TOPIC
    assert int(command[command.index("--partitions") + 1]) == KafkaConfig().partitions


# --------------------------------------------------------------------------- start order


def test_dependencies_exist_and_use_conditions_they_can_meet() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in all_services, f"{name} → {dependency}"
            target = all_services[dependency]
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency}'s health"
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is not a one-shot"
            else:
                pytest.fail(f"{name} → {dependency}: condition {condition}")


def test_long_running_services_have_health_checks() -> None:
    for name, service in services().items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service, name


# --------------------------------------------------------------------------- Prometheus


def _configured_port(name: str) -> int:
    env = service_env(name)
    for key in (
        "STEADFAST_PORT",
        "STEADFAST_WAREHOUSE_PORT",
        "STEADFAST_CONSOLE_PORT",
        "STEADFAST_METRICS_PORT",
    ):
        if key in env:
            return int(env[key])
    raise AssertionError(f"{name} sets no port")


def test_prometheus_scrapes_existing_services_on_their_ports() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {}
    for job in config["scrape_configs"]:
        jobs[job["job_name"]] = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert set(jobs) == JOBS
    for job, targets in jobs.items():
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in services(), f"{job}: no service {host}"
            assert int(port) == _configured_port(host), f"{job}: {target}"


def test_prometheus_loads_the_mounted_config_and_rules() -> None:
    service = services()["prometheus"]
    mounts = dict(bind_mounts(service))
    config_file = next(
        arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--config.file=")
    )
    assert mounts["./prometheus.compose.yml"] == config_file
    rules = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    assert rules == [mounts["./alerts.yml"]]


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not on PATH. `make test` installs it (Debian package `prometheus`)."
        )
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(LOCAL / "alerts.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (targets,) = [
        sc["targets"] for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"]
    ]
    assert targets == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in services()["alertmanager"]["ports"]


# --------------------------------------------------------------------------- Alertmanager

ALERTMANAGER_COMPOSE = LOCAL / "alertmanager.compose.yml"


def _launcher_alertmanager(tmp_path: Path) -> dict[str, Any]:
    text = alertmanager.render(
        webhook_url="http://127.0.0.1:1/alertmanager/webhook",
        credentials_file=tmp_path / "token",
        timing=alertmanager.Timing(),
    )
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def test_compose_and_launcher_alertmanager_route_alike(tmp_path: Path) -> None:
    compose_config = yaml.safe_load(ALERTMANAGER_COMPOSE.read_text())
    launcher_config = _launcher_alertmanager(tmp_path)
    assert compose_config["route"] == launcher_config["route"]
    assert compose_config["inhibit_rules"] == launcher_config["inhibit_rules"]
    (hook,) = compose_config["receivers"][0]["webhook_configs"]
    assert hook["url"] == "http://ops-console:8090/alertmanager/webhook"
    assert hook["send_resolved"] is True
    # The compose entrypoint writes the token to the file the config reads.
    token_file = hook["http_config"]["authorization"]["credentials_file"]
    assert token_file in services()["alertmanager"]["command"][0]


def test_alertmanager_inhibits_failure_ratio_while_the_breaker_is_open(tmp_path: Path) -> None:
    rules = {
        rule["alert"]
        for group in yaml.safe_load((LOCAL / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    inhibit = _launcher_alertmanager(tmp_path)["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="SteadfastBreakerOpenTooLong"']
    targets = inhibit["target_matchers"][0].split("=~", 1)[1].strip('"').split("|")
    assert "SteadfastWarehouseFailureRatioHigh" in targets
    assert set(targets) <= rules and "SteadfastBreakerOpenTooLong" in rules


@pytest.mark.parametrize("which", ["compose", "launcher"])
def test_amtool_accepts_the_alertmanager_configs(which: str, tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        message = "amtool is not on PATH; `make test` installs it (prometheus-alertmanager)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if which == "compose":
        path = ALERTMANAGER_COMPOSE
    else:
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(_launcher_alertmanager(tmp_path)))
    result = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Grafana, Filebeat


def test_grafana_mounts_what_provisioning_expects() -> None:
    mounts = dict(bind_mounts(services()["grafana"]))
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(GRAFANA_PROVIDER.read_text())["providers"][0]
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]


def test_filebeat_collects_exactly_our_services() -> None:
    config = yaml.safe_load(FILEBEAT.read_text())
    (template,) = config["filebeat.autodiscover"]["providers"][0]["templates"]
    ((label_key, label_value),) = template["condition"]["equals"].items()
    label = label_key.removeprefix("docker.container.labels.")
    for name, service in services().items():
        labelled = service.get("labels", {}).get(label) == label_value
        ours = name in SERVICE_SETTINGS or name == "migrate"
        assert labelled == ours, name


# --------------------------------------------------------------------------- docker-compose


def _docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        message = (
            "docker-compose is not on PATH; `make test` installs it "
            "(apt-get install -y docker-compose)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEADFAST_")}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
        check=False,
    )


def test_docker_compose_accepts_the_file() -> None:
    result = _docker_compose("config", "-q", env=TEST_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_refuses_to_start_without_an_admin_token() -> None:
    result = _docker_compose("config", "-q", env={})
    assert result.returncode != 0
    assert "STEADFAST_ADMIN_TOKEN" in result.stderr
