"""batch pipeline: processed events per handler with retention, a shared rate limit row

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Dedup is per handler: a second handler on the topic must not see the first one's
    # events as done. The retention sweep deletes by age.
    op.drop_constraint("processed_events_pkey", "processed_events", type_="primary")
    op.create_primary_key("processed_events_pkey", "processed_events", ["handler", "event_id"])
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])
    # One token bucket per name, shared by every scheduler instance.
    op.create_table(
        "rate_limits",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("burst", sa.Float(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
    op.drop_constraint("processed_events_pkey", "processed_events", type_="primary")
    op.create_primary_key("processed_events_pkey", "processed_events", ["event_id"])
