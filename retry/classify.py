"""Classification: the one place where a failure becomes retryable, terminal or poison.

Adapters raise `CallFailed(signal, reason)` with a short signal ("timeout", "connect",
"http_503", ...). The classifier looks the signal up in a table:

    exact key ("http_409")  beats  status family ("http_4xx")  beats  the default rule

and returns a `Classification` whose `error_class` is the signal itself, so it is stable
and low-cardinality (it names metrics series, alert rules and per-class policies).

    CallFailed            -> the table
    UndecodableMessage    -> POISON (the bytes will never decode, however often we retry)
    anything else         -> RETRYABLE, error_class "unexpected": a bug in our own code
                             must not lose the message, but it gets a low attempt cap
                             (`max_attempts_for`) so it does not spin forever either.

The table is configuration: `Classifier.from_mapping({"http_409": "terminal"})` overrides
entries of `DEFAULT_TABLE`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from retry.errors import CallFailed, UndecodableMessage
from retry.model import Classification, FailureKind
from retry.policy import PolicyTable, RetryPolicy

UNEXPECTED = "unexpected"


@dataclass(frozen=True, kw_only=True)
class Rule:
    kind: FailureKind
    counts_against_breaker: bool = False
    """True when the failure says the dependency is unhealthy, not that the request was bad."""


_RETRY_UNHEALTHY = Rule(kind=FailureKind.RETRYABLE, counts_against_breaker=True)
_TERMINAL = Rule(kind=FailureKind.TERMINAL)
_POISON = Rule(kind=FailureKind.POISON)

DEFAULT_TABLE: Mapping[str, Rule] = MappingProxyType(
    {
        "timeout": _RETRY_UNHEALTHY,
        "connect": _RETRY_UNHEALTHY,
        "http_5xx": _RETRY_UNHEALTHY,
        # A 429 is the dependency saying it is overloaded: back off (Retry-After is honoured
        # as the delay's floor) and let a burst of them open the breaker like 503s would.
        "http_429": _RETRY_UNHEALTHY,
        "http_400": _TERMINAL,
        "http_404": _TERMINAL,
        "http_409": _TERMINAL,
        "http_422": _TERMINAL,
        "http_4xx": _TERMINAL,
        "decode": _POISON,
        "schema": _POISON,
    }
)

# A signal nobody put in the table is most likely a new kind of transport failure: retry
# it (losing the message is the worse mistake) but don't let it open the breaker.
DEFAULT_RULE = Rule(kind=FailureKind.RETRYABLE, counts_against_breaker=False)

_HTTP_STATUS = re.compile(r"^http_([1-5])\d\d$")


def family_of(signal: str) -> str | None:
    """ "http_503" -> "http_5xx"; signals that are not HTTP statuses have no family."""
    match = _HTTP_STATUS.match(signal)
    return f"http_{match.group(1)}xx" if match else None


def _parse_rule(key: str, value: Rule | str | Mapping[str, Any]) -> Rule:
    if isinstance(value, Rule):
        return value
    if isinstance(value, str):
        kind = FailureKind(value.strip().upper())
        # A signal declared retryable is a dependency failure (why else retry it?), so it
        # counts against the breaker unless the mapping form says otherwise.
        return Rule(kind=kind, counts_against_breaker=kind is FailureKind.RETRYABLE)
    unknown = set(value) - {"kind", "counts_against_breaker"}
    if unknown or "kind" not in value:
        raise ValueError(
            f"classification rule for {key!r} takes 'kind' and optionally "
            f"'counts_against_breaker', got {sorted(value)}"
        )
    kind = FailureKind(str(value["kind"]).strip().upper())
    return Rule(
        kind=kind,
        counts_against_breaker=bool(value.get("counts_against_breaker", False)),
    )


class Classifier:
    """Turns exceptions into `Classification`s from a table of signal -> `Rule`."""

    def __init__(
        self,
        table: Mapping[str, Rule] = DEFAULT_TABLE,
        *,
        unexpected_max_attempts: int = 3,
        default: Rule = DEFAULT_RULE,
    ) -> None:
        if unexpected_max_attempts < 1:
            raise ValueError("unexpected_max_attempts must be >= 1")
        self._table: Mapping[str, Rule] = MappingProxyType(
            {key.strip().lower(): rule for key, rule in table.items()}
        )
        self._default = default
        self.unexpected_max_attempts = unexpected_max_attempts

    @classmethod
    def from_mapping(
        cls,
        overrides: Mapping[str, Rule | str | Mapping[str, Any]],
        *,
        base: Mapping[str, Rule] = DEFAULT_TABLE,
        unexpected_max_attempts: int = 3,
        default: Rule = DEFAULT_RULE,
    ) -> Classifier:
        """`base` with `overrides` on top; values are "retryable" | "terminal" | "poison",
        a `Rule`, or {"kind": ..., "counts_against_breaker": bool}."""
        table = dict(base)
        for key, value in overrides.items():
            try:
                table[key.strip().lower()] = _parse_rule(key, value)
            except ValueError as exc:
                raise ValueError(f"bad classification rule for {key!r}: {exc}") from None
        return cls(table, unexpected_max_attempts=unexpected_max_attempts, default=default)

    @property
    def table(self) -> Mapping[str, Rule]:
        return self._table

    def rule_for(self, signal: str) -> Rule:
        signal = signal.strip().lower()
        rule = self._table.get(signal)
        if rule is not None:
            return rule
        family = family_of(signal)
        if family is not None and family in self._table:
            return self._table[family]
        return self._default

    def classify(self, exc: BaseException) -> Classification:
        if isinstance(exc, UndecodableMessage):
            return Classification(
                kind=FailureKind.POISON, error_class=exc.signal, reason=exc.reason
            )
        if isinstance(exc, CallFailed):
            signal = exc.signal.strip().lower()
            rule = self.rule_for(signal)
            return Classification(
                kind=rule.kind,
                error_class=signal,
                reason=exc.reason,
                retry_after=exc.retry_after,
                counts_against_breaker=rule.counts_against_breaker,
            )
        # Our own bug (or an adapter that let a foreign exception leak): keep the message,
        # and keep the breaker out of it, since the dependency did nothing wrong.
        return Classification(
            kind=FailureKind.RETRYABLE,
            error_class=UNEXPECTED,
            reason=f"{type(exc).__name__}: {exc}",
        )

    def max_attempts_for(self, classification: Classification, policy: RetryPolicy) -> int:
        """The attempt cap to park a row with: the policy's, lowered for our own bugs."""
        if classification.error_class == UNEXPECTED:
            return min(policy.max_attempts, self.unexpected_max_attempts)
        return policy.max_attempts

    def next_delay(
        self,
        classification: Classification,
        attempt: int,
        policies: PolicyTable,
        rng: random.Random,
    ) -> float | None:
        """Seconds until the next attempt, or None: not retryable, or out of attempts.

        `attempt` counts the attempts already made (1 after the first failure).
        """
        if classification.kind is not FailureKind.RETRYABLE:
            return None
        policy = policies.for_class(classification.error_class)
        if attempt >= self.max_attempts_for(classification, policy):
            return None
        return policy.next_delay(attempt, rng, classification.retry_after)
