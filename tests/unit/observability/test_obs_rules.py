"""The Prometheus alert rules are valid, unit-tested, and cover what DESIGN.md asks for.

`promtool check rules` validates syntax and templates; `promtool test rules` runs
local/alerts_test.yml, where every rule has firing and not-firing cases. promtool comes
with Debian's `prometheus` package; a missing promtool fails, never skips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from observability_queries import ALERT_RULES, ROOT

RULES_TEST = ROOT / "local" / "alerts_test.yml"
REQUIRED_SEVERITIES = {"warning", "critical"}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook"}
# DESIGN.md "Threshold alerts" plus a target-down rule: the metric each must watch.
REQUIRED_SUBJECTS = {
    "warehouse failure ratio": "steadfast_warehouse_request_seconds_count",
    "DEAD growth": "steadfast_orders_final_total",
    "retry backlog": "steadfast_retry_rows",
    "breaker open too long": "steadfast_breaker_state",
    "consumer lag": "steadfast_consumer_lag_messages",
    "outbox age": "steadfast_outbox_oldest_age_seconds",
    "target down": "up",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. `make test` installs it (Debian package `prometheus`: "
            "apt-get install -y --no-install-recommends prometheus)."
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = run_promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_for_severity_and_runbook_annotations() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:`, it would fire on one bad scrape"
        assert rule.get("labels", {}).get("severity") in REQUIRED_SEVERITIES, name
        missing = REQUIRED_ANNOTATIONS - set(rule.get("annotations", {}))
        assert not missing, f"{name}: missing annotations {sorted(missing)}"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names


def test_the_required_subjects_are_covered() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    missing = {subject for subject, metric in REQUIRED_SUBJECTS.items() if metric not in exprs}
    assert not missing, f"no alert rule watches: {sorted(missing)}"
    assert any(rule["expr"].strip() == "up == 0" for rule in alert_rules())


def test_every_rule_has_firing_and_not_firing_cases() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert tests["rule_files"] == [ALERT_RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), f"rules without a firing case: {sorted(names - firing)}"
    assert names - silent == set(), f"rules without a not-firing case: {sorted(names - silent)}"


def test_rules_test_file_sits_next_to_the_rules() -> None:
    # promtool resolves rule_files relative to the test file.
    assert Path(RULES_TEST).parent == Path(ALERT_RULES).parent
