"""Alert routing end to end: Prometheus evaluates local/alerts.yml, Alertmanager routes
to the console's webhook, the console logs and shows each alert, firing then resolved.

The launcher starts Prometheus and Alertmanager as `make run` does. Only the timings are
the test's: the real rules with every `for:` cut to 1 s, a 1 s scrape and evaluation
interval, and 1 s grouping, so an outage's alert arrives within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from local.alertmanager import binary as alertmanager_binary

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULE = "SteadfastBreakerOpenTooLong"
STACK_ENV = {
    "STEADFAST_BREAKER__MIN_CALLS": "5",
    "STEADFAST_BREAKER__OPEN_SECONDS": "3",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.5",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "3",
    "STEADFAST_LOCAL_SCRAPE_INTERVAL": "1s",
    "STEADFAST_LOCAL_ALERT_GROUP_WAIT": "1s",
    "STEADFAST_LOCAL_ALERT_GROUP_INTERVAL": "1s",
    "STEADFAST_LOCAL_ALERT_REPEAT_INTERVAL": "1h",
}
TIMEOUT = 45.0


def _need_tools() -> None:
    missing = [
        name
        for name, found in (
            ("prometheus", shutil.which("prometheus")),
            ("prometheus-alertmanager", alertmanager_binary()),
        )
        if found is None
    ]
    if missing:
        message = f"{', '.join(missing)} not installed (`make test` installs them as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _fast_rules(path: Path) -> Path:
    rules = yaml.safe_load((ROOT / "local" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules))
    return path


def _until(check: Callable[[], Any], what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert stack.process.poll() is None, f"launcher exited{stack.output_tail()}"
        try:
            found = check()
        except httpx.TransportError:  # not answering yet counts as "not yet"
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out after {TIMEOUT:.0f}s waiting for {what}{stack.output_tail()}")


def _console_lines(stack: Stack, action: str) -> list[dict[str, Any]]:
    """The console's JSON log records with `event.action == action`, from the launcher output."""
    found = []
    for line in stack.log_path.read_text(errors="replace").splitlines():
        _, _, rest = line.partition("| ")
        if "console-1" not in line.split("|", 1)[0] or not rest.startswith("{"):
            continue
        try:
            record = json.loads(rest)
        except ValueError:
            continue
        if record.get("event.action") == action:
            found.append(record)
    return found


def test_an_outage_alert_reaches_the_console_through_alertmanager_and_resolves(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    _need_tools()
    started = time.monotonic()
    env = {**STACK_ENV, "STEADFAST_LOCAL_ALERT_RULES": str(_fast_rules(tmp_path / "rules.yml"))}
    stack = stack_factory(prometheus=True, env=env)
    assert stack.endpoints["alertmanager"], stack.output_tail()
    console = httpx.Client(base_url=stack.endpoints["console"], trust_env=False, timeout=10)
    signed_in = console.post("/api/session", json={"token": stack.admin_token})
    assert signed_in.status_code == 200, signed_in.text

    # Alertmanager runs the generated routing: default receiver, the console's webhook.
    status = stack.get("alertmanager", "/api/v2/status").json()
    original = status["config"]["original"]
    assert f"{stack.endpoints['console']}/alertmanager/webhook" in original
    assert "SteadfastBreakerOpenTooLong" in original  # the inhibition rule
    assert stack.admin_token not in original  # the token is in a file of its own

    # Unauthenticated deliveries are refused: only Alertmanager (with the token) gets in.
    forged = console.post(
        "/alertmanager/webhook",
        json={"version": "4", "status": "firing", "receiver": "x", "alerts": []},
    )
    assert forged.status_code == 401

    def received(state: str) -> dict[str, Any] | None:
        alerts = console.get("/api/overview").json()["alerts"]["received"]
        return next((a for a in alerts if a["name"] == RULE and a["status"] == state), None)

    assert received("firing") is None

    # -- the outage: the breaker opens, the rule fires, Alertmanager delivers
    faults = stack.put("warehouse", "/admin/faults", json={"outage": True})
    assert faults.status_code == 200, faults.text
    for i in range(12):
        placed = stack.post(
            "api",
            "/orders",
            json={"customer_id": "alerts", "items": [{"sku": f"S-{i}", "quantity": 1}]},
        )
        assert placed.status_code == 202, placed.text
    firing = _until(lambda: received("firing"), f"{RULE} firing at the console", stack)
    assert firing["severity"] == "critical"
    assert firing["alert_labels"]["name"] == "warehouse"
    assert firing["receiver"] == "console"
    (line,) = [r for r in _console_lines(stack, "alert_firing") if r["alert.name"] == RULE]
    assert line["alert.labels"]["name"] == "warehouse"
    active = console.get("/api/overview").json()["alerts"]
    assert active["alertmanager"] == "up"

    # -- recovery: the breaker closes, the alert resolves, Alertmanager says so
    faults = stack.put("warehouse", "/admin/faults", json={"outage": False})
    assert faults.status_code == 200, faults.text
    resolved = _until(lambda: received("resolved"), f"{RULE} resolved at the console", stack)
    assert resolved["ends_at"]
    assert [r for r in _console_lines(stack, "alert_resolved") if r["alert.name"] == RULE]
    console.close()
    print(f"alertmanager test: {time.monotonic() - started:.1f}s")  # noqa: T201
