"""The architecture is enforced, not hoped for: libraries never reach into the app.

`retry/` and `outbox/` are libraries. They import neither `services` nor each other nor
`local`, and they read no settings. Frameworks stay at their edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


FORBIDDEN = {
    "retry": ("services", "outbox", "local", "pydantic_settings", "faust", "httpx"),
    "outbox": ("services", "retry", "local", "pydantic_settings", "faust", "fastapi"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_libraries_do_not_import_the_app(package: str) -> None:
    modules = _modules(package)
    assert modules, f"{package}/ has no modules"
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert offenders == []


# Each framework may only be imported by the modules that are its edge.
EDGES = {
    "faust": {"services/reservation/consumer.py", "services/reservation/app.py"},
    "aiokafka": {"services/reservation/consumer.py"},
    "confluent_kafka": {
        "outbox/relay.py",
        "outbox/kafka.py",
        "services/reservation/lag.py",
        "services/reservation/relay_process.py",
        "services/common/kafka.py",
        "local/infra.py",
    },
}


@pytest.mark.parametrize("framework", sorted(EDGES))
def test_frameworks_stay_at_their_edges(framework: str) -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for package in ("services", "retry", "outbox")
        for path in _modules(package)
        if any(name.split(".")[0] == framework for name in _imports(path))
        and str(path.relative_to(ROOT)) not in EDGES[framework]
    )
    assert offenders == []


def test_no_module_level_settings_instances() -> None:
    offenders = []
    for package in ("services", "retry", "outbox", "local"):
        for path in _modules(package):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name)
                    and node.value.func.id.endswith("Settings")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
