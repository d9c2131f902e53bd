"""Schemathesis against both OpenAPI documents: no 5xx, every answer documented.

Every operation gets schemathesis's examples, coverage cases and positive and negative
fuzzing, with the admin token, so the admin routes are fuzzed past their auth; the
`ignored_auth` check also replays authenticated calls without it. Runs are derandomized:
CI sees the same inputs every time, and a failure reproduces locally.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from tests.fuzz.apps import AUTH, reservation_api_for_docs, warehouse_mock

FUZZ = settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

# 413 is a rejection too: the body limit answers before the schema is checked.
NEGATIVE = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
POSITIVE = ["2xx", 401, 403, 404, 409, 429]
# Schema-valid requests that the API still refuses, by rules JSON Schema cannot express:
# an opaque cursor it never issued (400), an Idempotency-Key reused with another body,
# created_from after created_to, a latency range with low above high (422).
RULES = {
    400: ["GET /orders"],
    422: [
        "POST /orders",
        "GET /admin/retries",
        "POST /admin/retries/reprocess",
        "POST /reservations",
        "PUT /admin/faults",
    ],
}


def _config() -> schemathesis.Config:
    operations = "".join(
        f"""
[[operations]]
include-name = {names!r}
checks.positive_data_acceptance.expected-statuses = {[*POSITIVE, status]!r}
"""
        for status, names in RULES.items()
    )
    return schemathesis.Config.from_str(
        f"""
[checks.negative_data_rejection]
expected-statuses = {NEGATIVE!r}
[checks.positive_data_acceptance]
expected-statuses = {POSITIVE!r}
{operations}"""
    )


CONFIG = _config()
reservation = schemathesis.openapi.from_asgi(
    "/openapi.json", reservation_api_for_docs(), config=CONFIG
)
# One app for every operation: reservations made by earlier examples are what make later
# ones reach the duplicate, conflict and release paths.
WAREHOUSE = warehouse_mock()
warehouse = schemathesis.openapi.from_asgi("/openapi.json", WAREHOUSE, config=CONFIG)


@pytest.mark.postgres
@reservation.parametrize()
@FUZZ
def test_reservation_api_answers_as_documented(
    case: schemathesis.Case[Any], reservation_app: FastAPI
) -> None:
    case.call_and_validate(app=reservation_app, headers=AUTH)


@warehouse.parametrize()
@FUZZ
def test_warehouse_mock_answers_as_documented(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(headers=AUTH)
