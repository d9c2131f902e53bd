"""Tables owned by the reservation service: orders and their status journey."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

ORDER_STATUSES = ("PENDING", "RESERVED", "RETRY_PENDING", "REJECTED", "DEAD", "CANCELLED")
FINAL_STATUSES = ("RESERVED", "REJECTED", "DEAD", "CANCELLED")

orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("items", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("status_reason", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("idempotency_key", Text, unique=True),
    Column("request_hash", Text),
    Column("trace_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finalized_at", DateTime(timezone=True)),
    Column("cancel_requested_at", DateTime(timezone=True)),
    # Cursor pagination walks (created_at, id); the status filter narrows it.
    Index("ix_orders_status_created", "status", "created_at", "id"),
    Index("ix_orders_created", "created_at", "id"),
)

order_status_history = Table(
    "order_status_history",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("order_id", Uuid, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("attempt", Integer),
    Column("details", JSONB),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_order_status_history_order", "order_id", "id"),
)
