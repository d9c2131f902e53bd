"""Alembic environment: online migrations over psycopg 3, URL from config or env."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from local.infra import sqlalchemy_url
from outbox.schema import metadata as outbox_metadata
from retry.schema import metadata as retry_metadata
from services.reservation.schema import metadata as reservation_metadata

config = context.config
target_metadata = [outbox_metadata, retry_metadata, reservation_metadata]


def _url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("STEADFAST_DATABASE_URL")
    )
    if not url:
        raise RuntimeError("set STEADFAST_DATABASE_URL (or pass -x url=...) to migrate")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Two processes migrating at once (launcher + a test) must not race.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727001)")
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
