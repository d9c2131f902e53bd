"""Values of the retry table: rows as read, operator filters, pages and cursors.

What the store hands out and takes in, with no I/O: `RetrySummary` and `RetryRow` (and
`row_from`, which maps a result row onto them), `RetryFilter` (an operator's selection,
validated on construction), `Page` with its opaque keyset cursor, `Parked` and
`RequeueResult`. `clean_text` lives here because filters need it as much as writes do:
PostgreSQL text rejects what Python strings allow.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.sql.elements import ColumnElement

from retry.errors import RetryEngineError
from retry.model import Message
from retry.schema import RETRY_STATES, retry_messages

t = retry_messages
ORDERING_ERROR = "ordering"
"""error_class of a row parked behind an earlier open row with its key."""


class InvalidQuery(RetryEngineError, ValueError):
    """An operator query is malformed: an unknown state, a naive datetime, a bad cursor."""


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetrySummary:
    """One row as operators list it: no payload, headers or history."""

    id: int
    handler: str
    message_id: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    key: str | None
    state: str
    error_class: str
    last_error: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class RetryRow(RetrySummary):
    """A whole row: what a re-drive needs, and what an operator inspects."""

    source_timestamp: datetime | None
    consumer_group: str | None
    payload: bytes
    headers: Mapping[str, str]
    lease_owner: str | None
    lease_expires_at: datetime | None
    history: Sequence[Mapping[str, Any]]

    @property
    def round_start(self) -> int:
        """Attempts granted before the current round: 0 unless an operator requeued the row."""
        size = self.history[0].get("max_attempts") if self.history else None
        return max(0, self.max_attempts - size) if type(size) is int else 0

    def to_message(self) -> Message:
        """The message as it was parked, byte for byte."""
        return Message(
            topic=self.source_topic,
            value=self.payload,
            key=self.key,
            partition=self.source_partition,
            offset=self.source_offset,
            timestamp=self.source_timestamp,
            headers=dict(self.headers),
            consumer_group=self.consumer_group,
        )


_S = TypeVar("_S", bound=RetrySummary)


def row_from(cls: type[_S], data: Mapping[Any, Any]) -> _S:
    """Map a result row to `cls`, coercing what JSONB and bytea may hand back."""
    values = {f.name: data[f.name] for f in fields(cls)}
    if "payload" in values:
        values["payload"] = bytes(values["payload"])
    if "headers" in values:
        raw = values["headers"]
        values["headers"] = (
            {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        )
    if "history" in values:
        raw = values["history"]
        values["history"] = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class RetryFilter:
    """What operators select by. `created_to` is exclusive: [created_from, created_to)."""

    states: tuple[str, ...] = ()
    error_class: str | None = None
    key: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.states) - set(RETRY_STATES))
        if unknown:
            raise InvalidQuery(f"unknown state(s) {unknown}; expected any of {list(RETRY_STATES)}")
        for name in ("created_from", "created_to"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise InvalidQuery(f"{name} must carry a timezone")
        if self.created_from and self.created_to and self.created_from >= self.created_to:
            raise InvalidQuery("created_from must be earlier than created_to")

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.states:
            out.append(t.c.state.in_(self.states))
        if self.error_class is not None:
            out.append(t.c.error_class == self.error_class)
        if self.key is not None:
            out.append(t.c.key == clean_text(self.key))
        if self.created_from is not None:
            out.append(t.c.created_at >= self.created_from)
        if self.created_to is not None:
            out.append(t.c.created_at < self.created_to)
        return out


@dataclass(frozen=True)
class Page:
    items: list[RetrySummary]
    next_cursor: str | None
    """Pass back to get the next page; None on the last page."""


class Parked(NamedTuple):
    id: int
    created: bool
    """False when the message was already parked (a redelivery): nothing was written."""
    next_attempt_at: datetime


class RequeueResult(NamedTuple):
    matched: int
    """Requeueable rows the request selected (at most `limit`)."""
    requeued: int
    """Rows made due now; 0 on a dry run."""


def encode_cursor(last_id: int) -> str:
    """An opaque cursor: the last id seen, versioned so its shape may change later."""
    raw = json.dumps({"v": 1, "id": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidQuery("malformed cursor") from exc
    if not isinstance(data, dict) or data.get("v") != 1:
        raise InvalidQuery("malformed cursor")
    last_id = data.get("id")
    if type(last_id) is not int or last_id < 1:
        raise InvalidQuery("malformed cursor")
    return last_id


def clean_text(value: str) -> str:
    """PostgreSQL text and JSONB reject NUL and lone surrogates: escape them, keep the rest."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
