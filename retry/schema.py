"""Tables of the retry engine. Alembic creates them; the stores read and write them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

RETRY_STATES = ("PENDING", "IN_PROGRESS", "SUCCEEDED", "DEAD", "CANCELLED")
BREAKER_STATES = ("CLOSED", "OPEN", "HALF_OPEN")

retry_messages = Table(
    "retry_messages",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    # Where the message came from: DLQ-grade metadata, kept for operators.
    Column("source_topic", Text, nullable=False),
    Column("source_partition", Integer),
    Column("source_offset", BigInteger),
    Column("source_timestamp", DateTime(timezone=True)),
    Column("consumer_group", Text),
    Column("message_id", Text, nullable=False),
    Column("key", Text),
    # Raw bytes, so a poison message is kept exactly as it arrived.
    Column("payload", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("handler", Text, nullable=False),
    Column("error_class", Text, nullable=False),
    Column("last_error", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("state", Text, nullable=False, server_default=text("'PENDING'")),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    # Every attempt: [{"at", "outcome", "error_class", "reason", "by"}], oldest first.
    Column("history", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_retry_messages_state_due", "state", "next_attempt_at"),
    # A redelivered message is parked once, whatever state its first copy reached.
    Index("ux_retry_messages_handler_message", "handler", "message_id", unique=True),
    # Per-key ordering asks "is anything earlier for this key still open?" on every message.
    Index(
        "ix_retry_messages_open_key",
        "source_topic",
        "key",
        "id",
        postgresql_where=text("state IN ('PENDING', 'IN_PROGRESS')"),
    ),
)

# The idempotent consumer's memory, per handler: every event a handler has taken
# responsibility for (handled, or parked in retry_messages), kept for a retention period.
processed_events = Table(
    "processed_events",
    metadata,
    Column("handler", Text, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("outcome", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_processed_events_processed_at", "processed_at"),
)

# Token buckets shared by every instance: the re-drive rate holds for the whole cluster.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("name", Text, primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("rate", Float, nullable=False),
    Column("burst", Float, nullable=False),
    Column(
        "updated_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
)

circuit_breakers = Table(
    "circuit_breakers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("state", Text, nullable=False, server_default=text("'CLOSED'")),
    Column("opened_at", DateTime(timezone=True)),
    # The sliding window as 1-second buckets {"bucket_seconds", "buckets": [[index, ok,
    # failed], ...]}, plus the episode start and half-open time that outlive one OPEN.
    Column("window", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("half_open_permits", Integer, nullable=False, server_default=text("0")),
    Column("half_open_successes", Integer, nullable=False, server_default=text("0")),
    Column("forced", Text),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
