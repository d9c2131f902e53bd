"""Pure parts of the retry store, processor and admin: cursors, filters, mappings, plans."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from retry.admin import RetryDetail, RetryItem, _detail, _item
from retry.failure import FailurePlan, plan_failure
from retry.model import Classification, FailureKind, Message
from retry.policy import FixedPolicy, LogarithmicPolicy
from retry.rows import (
    InvalidQuery,
    RetryFilter,
    RetryRow,
    RetrySummary,
    clean_text,
    decode_cursor,
    encode_cursor,
    row_from,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# -- cursors --------------------------------------------------------------------------------


@pytest.mark.parametrize("last_id", [1, 42, 2**62])
def test_cursor_round_trips(last_id: int) -> None:
    cursor = encode_cursor(last_id)
    assert decode_cursor(cursor) == last_id
    assert cursor.isascii() and "=" not in cursor and str(last_id) not in cursor


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not-base64-json",
        _b64(b"[]"),
        _b64(b'{"id": 5}'),  # no version
        _b64(b'{"v": 2, "id": 5}'),
        _b64(b'{"v": 1, "id": "5"}'),
        _b64(b'{"v": 1, "id": 0}'),
        _b64(b'{"v": 1, "id": true}'),
        _b64(b"\xff\xfe"),
    ],
)
def test_malformed_cursor_is_rejected(cursor: str) -> None:
    with pytest.raises(InvalidQuery, match="malformed cursor"):
        decode_cursor(cursor)


# -- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"states": ("PARKED",)}, "unknown state"),
        ({"states": ("DEAD", "dead")}, "unknown state"),
        ({"created_from": datetime(2026, 1, 1)}, "timezone"),  # noqa: DTZ001
        ({"created_to": datetime(2026, 1, 1)}, "timezone"),  # noqa: DTZ001
        ({"created_from": T0, "created_to": T0}, "earlier"),
        ({"created_from": T0, "created_to": T0 - timedelta(seconds=1)}, "earlier"),
    ],
)
def test_filter_validation(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidQuery, match=error):
        RetryFilter(**kwargs)


def test_filter_clauses() -> None:
    assert RetryFilter().clauses() == []
    other_zone = timezone(timedelta(hours=2))
    full = RetryFilter(
        states=("DEAD", "PENDING"),
        error_class="http_503",
        key="order-1",
        created_from=T0.astimezone(other_zone),
        created_to=T0 + timedelta(days=1),
    )
    rendered = [str(c.compile(compile_kwargs={"literal_binds": True})) for c in full.clauses()]
    assert rendered == [
        "retry_messages.state IN ('DEAD', 'PENDING')",
        "retry_messages.error_class = 'http_503'",
        "retry_messages.key = 'order-1'",
        "retry_messages.created_at >= '2026-03-01 14:00:00+02:00'",
        "retry_messages.created_at < '2026-03-02 12:00:00+00:00'",
    ]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("nul\x00byte", "nul\\x00byte"),
        ("lone\udcffsurrogate", "lone\\udcffsurrogate"),
        ("ünïcödé ✓", "ünïcödé ✓"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


# -- result mapping -------------------------------------------------------------------------


def _db_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "handler": "reserve-stock",
        "message_id": "e-7",
        "source_topic": "orders",
        "source_partition": 2,
        "source_offset": 99,
        "source_timestamp": T0,
        "consumer_group": "g",
        "key": "order-7",
        "payload": memoryview(b"\xff raw"),
        "headers": {"event_id": "e-7", "n": 3},
        "state": "DEAD",
        "error_class": "http_409",
        "last_error": "no stock",
        "attempts": 8,
        "max_attempts": 16,
        "next_attempt_at": T0,
        "lease_owner": None,
        "lease_expires_at": None,
        "history": [
            {"at": T0.isoformat(), "outcome": "parked", "attempt": 1, "max_attempts": 8},
            "garbage",
            {"at": T0.isoformat(), "outcome": "requeued", "attempt": 8, "by": "op"},
        ],
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


def test_row_mapping_coerces_jsonb_and_bytea() -> None:
    row = row_from(RetryRow, _db_row())
    assert row.payload == b"\xff raw"
    assert row.headers == {"event_id": "e-7", "n": "3"}
    assert [e["outcome"] for e in row.history] == ["parked", "requeued"]
    assert row.round_start == 8  # 16 granted, a round is 8: one requeue
    assert row.to_message() == Message(
        topic="orders",
        value=b"\xff raw",
        key="order-7",
        partition=2,
        offset=99,
        timestamp=T0,
        headers={"event_id": "e-7", "n": "3"},
        consumer_group="g",
    )
    summary = row_from(RetrySummary, _db_row())
    assert not hasattr(summary, "payload") and summary.id == 7


@pytest.mark.parametrize(
    ("history", "max_attempts", "start"),
    [
        ([], 8, 0),
        ([{"outcome": "parked"}], 8, 0),
        ([{"outcome": "parked", "max_attempts": 8}], 8, 0),
        ([{"outcome": "parked", "max_attempts": 3}], 10, 7),
        ([{"outcome": "parked", "max_attempts": "8"}], 16, 0),
    ],
)
def test_round_start(history: list[dict[str, Any]], max_attempts: int, start: int) -> None:
    row = row_from(RetryRow, _db_row(history=history, max_attempts=max_attempts))
    assert row.round_start == start


def test_garbage_jsonb_maps_to_empty() -> None:
    row = row_from(RetryRow, _db_row(headers=["x"], history={"not": "a list"}))
    assert row.headers == {} and row.history == []


def test_admin_models() -> None:
    row = row_from(RetryRow, _db_row())
    item = _item(row)
    assert isinstance(item, RetryItem) and item.state == "DEAD" and item.attempts == 8
    assert "payload" not in item.model_dump()
    detail = _detail(row)
    assert isinstance(detail, RetryDetail)
    assert base64.b64decode(detail.payload_base64) == b"\xff raw"
    assert detail.payload_text is None
    assert [h.outcome for h in detail.history] == ["parked", "requeued"]
    text_row = row_from(RetryRow, _db_row(payload=b'{"ok": true}'))
    assert _detail(text_row).payload_text == '{"ok": true}'


# -- the failure plan -----------------------------------------------------------------------


def _cls(kind: FailureKind, error_class: str = "timeout", **kw: Any) -> Classification:
    return Classification(kind=kind, error_class=error_class, reason="r", **kw)


FIXED = FixedPolicy(delay=10, jitter=0, max_attempts=4)


@dataclass(frozen=True)
class Case:
    cls: Classification
    attempt: int
    expected: FailurePlan
    round_start: int = 0
    max_attempts: int = 4


@pytest.mark.parametrize(
    "case",
    [
        Case(_cls(FailureKind.RETRYABLE), 1, FailurePlan("PENDING", 10.0, 4)),
        Case(_cls(FailureKind.RETRYABLE), 3, FailurePlan("PENDING", 10.0, 4)),
        Case(_cls(FailureKind.RETRYABLE), 4, FailurePlan("DEAD", None, 4)),
        Case(_cls(FailureKind.TERMINAL, "http_409"), 1, FailurePlan("DEAD", None, 4)),
        Case(_cls(FailureKind.POISON, "decode"), 1, FailurePlan("DEAD", None, 4)),
        Case(_cls(FailureKind.RETRYABLE, "unexpected"), 1, FailurePlan("PENDING", 10.0, 4)),
        Case(_cls(FailureKind.RETRYABLE, "unexpected"), 2, FailurePlan("DEAD", None, 4)),
        Case(_cls(FailureKind.RETRYABLE, retry_after=120.0), 1, FailurePlan("PENDING", 120.0, 4)),
        # After an operator's requeue (4 attempts made, 8 granted): a fresh round.
        Case(_cls(FailureKind.RETRYABLE), 5, FailurePlan("PENDING", 10.0, 8), 4, 8),
        Case(_cls(FailureKind.RETRYABLE), 8, FailurePlan("DEAD", None, 8), 4, 8),
        Case(_cls(FailureKind.RETRYABLE, "unexpected"), 5, FailurePlan("PENDING", 10.0, 8), 4, 8),
    ],
)
def test_plan_failure(case: Case) -> None:
    plan = plan_failure(
        case.cls,
        attempt=case.attempt,
        round_start=case.round_start,
        max_attempts=case.max_attempts,
        policy=FIXED,
        rng=random.Random(0),
        unexpected_cap=2,
    )
    assert plan == case.expected


def test_plan_uses_the_policy_curve_per_round() -> None:
    policy = LogarithmicPolicy(base_delay=2, max_delay=60, jitter=0, max_attempts=8)
    delays = [
        plan_failure(
            _cls(FailureKind.RETRYABLE),
            attempt=n,
            round_start=0,
            max_attempts=8,
            policy=policy,
            rng=random.Random(0),
            unexpected_cap=3,
        ).delay
        for n in range(1, 8)
    ]
    assert delays[0] == pytest.approx(2.0)  # delay(1) = base
    assert delays == sorted(delays)
