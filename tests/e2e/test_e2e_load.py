"""`steadfast-load` against the real pipeline started by the launcher behind `make run`.

A small mixed run (healthy, out-of-stock, flaky and poison) through the console script
itself: its exit code and JSON must say 0 lost and 0 duplicates with counts that add up,
and they must agree with the database and the warehouse mock's own stats.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from local.infra import libpq_url
from tests.processes import assert_reserved_at_most_once

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

LOAD = Path(sys.executable).parent / "steadfast-load"
UNITS = 60  # 48 healthy, 6 out of stock, 3 flaky, 3 poison: the mix is exact per 20


def test_mixed_load_ends_with_nothing_lost_and_no_duplicates(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    topic = f"reservations.order-events.load-{uuid.uuid4().hex[:8]}"
    stack = stack_factory(
        env={
            "STEADFAST_KAFKA__TOPIC": topic,
            "STEADFAST_KAFKA__CONSUMER_GROUP": f"load-{uuid.uuid4().hex[:8]}",
        }
    )
    out = tmp_path / "load.json"
    args = [
        "--endpoints", str(stack.endpoints_path), "--topic", topic,
        "--rate", "40/s", "--count", str(UNITS),
        "--mix", "healthy=80,out_of_stock=10,flaky=5,poison=5",
        "--settle-timeout", "45", "--output", str(out), "--quiet",
    ]  # fmt: skip
    run = subprocess.run(
        [str(LOAD), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}{stack.output_tail()}"
    result = json.loads(out.read_text())

    assert result["ok"] is True and result["problems"] == []
    assert result["lost"] == 0 and result["still_pending"] == 0 and result["missing"] == 0
    assert result["duplicates"] == 0
    assert result["poison_injected"] == 3
    assert result["poison_dead_lettered"] == 3
    assert result["attempted"] == result["placed"] == UNITS - 3
    finals = result["reserved"] + result["rejected"] + result["dead"] + result["cancelled"]
    assert finals == result["placed"]
    assert (result["reserved"], result["rejected"], result["dead"]) == (51, 6, 0)
    assert result["unexpected"] == {}
    assert result["warehouse_reservations"] == result["reserved"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]

    # The load generator's view agrees with the database...
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall())
        poison = conn.execute(
            "SELECT state, count(*) FROM retry_messages WHERE key LIKE 'load-poison-%' GROUP BY 1"
        ).fetchall()
    assert statuses == {"RESERVED": 51, "REJECTED": 6}
    assert dict(poison) == {"DEAD": 3}
    # ...and with the warehouse, whose faults the run put back as they were.
    stats = stack.get("warehouse", "/admin/stats").json()
    assert_reserved_at_most_once(stats)
    assert stats["reservations"] == 51
    assert stack.get("warehouse", "/admin/faults").json()["config"]["failure_rate"] == 0.0
