"""Classification: each signal to its kind, error class and breaker flag, from the table."""

from __future__ import annotations

import random
from typing import Any

import pytest

from retry.classify import DEFAULT_TABLE, Classifier, Rule, family_of
from retry.errors import CallFailed, UndecodableMessage
from retry.model import Classification, FailureKind
from retry.policy import FixedPolicy, PolicyTable

R, T, P = FailureKind.RETRYABLE, FailureKind.TERMINAL, FailureKind.POISON


@pytest.mark.parametrize(
    ("signal", "kind", "against_breaker"),
    [
        ("timeout", R, True),
        ("connect", R, True),
        ("http_500", R, True),
        ("http_502", R, True),
        ("http_503", R, True),
        ("http_504", R, True),
        ("http_429", R, True),  # overloaded: back off, and let a burst open the breaker
        ("http_400", T, False),
        ("http_404", T, False),
        ("http_409", T, False),  # out of stock: a business answer, not an outage
        ("http_422", T, False),
        ("http_401", T, False),  # any other 4xx: the request is wrong, retrying won't help
        ("http_418", T, False),
        ("decode", P, False),
        ("schema", P, False),
        ("tls_handshake", R, False),  # unknown signal: retried, but the breaker ignores it
        ("HTTP_503", R, True),  # signals are case-insensitive
    ],
)
def test_default_table(signal: str, kind: FailureKind, against_breaker: bool) -> None:
    result = Classifier().classify(CallFailed(signal, "it failed", retry_after=None))
    assert result == Classification(
        kind=kind,
        error_class=signal.lower(),
        reason="it failed",
        counts_against_breaker=against_breaker,
    )


def test_retry_after_is_passed_through() -> None:
    result = Classifier().classify(CallFailed("http_429", "slow down", retry_after=12.5))
    assert result.retry_after == 12.5


@pytest.mark.parametrize(
    ("signal", "family"),
    [("http_503", "http_5xx"), ("http_404", "http_4xx"), ("http_5", None), ("timeout", None)],
)
def test_status_families(signal: str, family: str | None) -> None:
    assert family_of(signal) == family


def test_exact_beats_family_beats_default() -> None:
    table = {
        "http_503": Rule(kind=T),
        "http_5xx": Rule(kind=R, counts_against_breaker=True),
    }
    classifier = Classifier(table, default=Rule(kind=P))
    assert classifier.rule_for("http_503") == Rule(kind=T)
    assert classifier.rule_for("http_500") == Rule(kind=R, counts_against_breaker=True)
    assert classifier.rule_for("http_404") == Rule(kind=P)  # no 4xx family in this table


@pytest.mark.parametrize(
    ("exc", "error_class", "reason"),
    [
        (UndecodableMessage("not JSON"), "decode", "not JSON"),
        (UndecodableMessage("no order_id", signal="schema"), "schema", "no order_id"),
    ],
)
def test_undecodable_messages_are_poison(
    exc: UndecodableMessage, error_class: str, reason: str
) -> None:
    assert Classifier().classify(exc) == Classification(
        kind=P, error_class=error_class, reason=reason
    )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (KeyError("sku"), "KeyError: 'sku'"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
        (RuntimeError(), "RuntimeError: "),
    ],
)
def test_our_own_bugs_are_retryable_as_unexpected(exc: Exception, reason: str) -> None:
    assert Classifier().classify(exc) == Classification(
        kind=R, error_class="unexpected", reason=reason, counts_against_breaker=False
    )


@pytest.mark.parametrize(
    ("overrides", "signal", "rule"),
    [
        ({"http_409": "retryable"}, "http_409", Rule(kind=R, counts_against_breaker=True)),
        ({"HTTP_404": "Poison"}, "http_404", Rule(kind=P)),
        (
            {"http_5xx": {"kind": "retryable", "counts_against_breaker": False}},
            "http_502",
            Rule(kind=R, counts_against_breaker=False),
        ),
        ({"http_409": Rule(kind=P)}, "http_409", Rule(kind=P)),
        ({"http_409": "retryable"}, "http_404", DEFAULT_TABLE["http_404"]),  # rest kept
    ],
)
def test_from_mapping_overrides_entries(overrides: dict[str, Any], signal: str, rule: Rule) -> None:
    assert Classifier.from_mapping(overrides).rule_for(signal) == rule


@pytest.mark.parametrize(
    "overrides",
    [
        {"http_409": "maybe"},
        {"http_409": {"counts_against_breaker": True}},
        {"http_409": {"kind": "terminal", "colour": "red"}},
    ],
)
def test_from_mapping_refuses_bad_rules(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="http_409"):
        Classifier.from_mapping(overrides)


def test_the_default_table_cannot_be_changed_through_a_classifier() -> None:
    classifier = Classifier()
    with pytest.raises(TypeError):
        classifier.table["http_409"] = Rule(kind=R)  # type: ignore[index]


UNEXPECTED = Classifier().classify(ValueError("bug"))
TIMEOUT = Classifier().classify(CallFailed("timeout", "read timed out"))
CONFLICT = Classifier().classify(CallFailed("http_409", "out of stock"))


@pytest.mark.parametrize(
    ("classification", "policy_attempts", "cap", "expected"),
    [
        (UNEXPECTED, 8, 3, 3),  # our bug: the low cap
        (UNEXPECTED, 2, 3, 2),  # ...unless the policy is stricter still
        (TIMEOUT, 8, 3, 8),
    ],
)
def test_max_attempts_for(
    classification: Classification, policy_attempts: int, cap: int, expected: int
) -> None:
    classifier = Classifier(unexpected_max_attempts=cap)
    assert (
        classifier.max_attempts_for(classification, FixedPolicy(max_attempts=policy_attempts))
        == expected
    )


@pytest.mark.parametrize(
    ("classification", "attempt", "expected"),
    [
        (TIMEOUT, 1, 1.0),
        (TIMEOUT, 7, 1.0),
        (TIMEOUT, 8, None),  # out of attempts
        (UNEXPECTED, 2, 1.0),
        (UNEXPECTED, 3, None),  # the unexpected cap
        (CONFLICT, 1, None),  # terminal: never retried
    ],
)
def test_next_delay_combines_kind_cap_and_policy(
    classification: Classification, attempt: int, expected: float | None
) -> None:
    policies = PolicyTable(default=FixedPolicy(delay=1.0, jitter=0.0, max_attempts=8))
    classifier = Classifier(unexpected_max_attempts=3)
    assert classifier.next_delay(classification, attempt, policies, random.Random(0)) == expected


def test_next_delay_uses_the_error_class_policy_and_retry_after() -> None:
    policies = PolicyTable(by_error_class={"http_429": FixedPolicy(delay=5.0, jitter=0.0)})
    throttled = Classifier().classify(CallFailed("http_429", "busy", retry_after=20.0))
    assert Classifier().next_delay(throttled, 1, policies, random.Random(0)) == 20.0


def test_unexpected_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Classifier(unexpected_max_attempts=0)
