"""Wake the relay when a writer commits: LISTEN on a dedicated psycopg connection.

Writers call `pg_notify` in their transaction (see `outbox.store.add_events`), so a
notification arrives exactly at commit. The relay still polls, so a lost connection or
a missed notification delays publication by at most one poll interval.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from outbox.store import DEFAULT_CHANNEL

log = logging.getLogger(__name__)


class Wakeup(Protocol):
    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True if there may be new rows."""
        ...

    def close(self) -> None: ...


class PgListener:
    """`Wakeup` over PostgreSQL LISTEN; reconnects by itself after the database returns."""

    def __init__(
        self,
        conninfo: str,
        channel: str = DEFAULT_CHANNEL,
        *,
        reconnect_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._reconnect_interval = reconnect_interval
        self._clock = clock
        self._sleep = sleep
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._next_connect = 0.0

    @classmethod
    def from_engine(cls, engine: Engine, channel: str = DEFAULT_CHANNEL) -> PgListener:
        """Listen on the engine's database, outside its pool (the connection is held)."""
        url = engine.url.set(drivername="postgresql")
        return cls(url.render_as_string(hide_password=False), channel)

    def wait(self, timeout: float) -> bool:
        conn = self._connection()
        if conn is None:
            self._sleep(timeout)
            return False
        try:
            woke = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:
                # Commits that came while the relay was busy are all served by the next
                # claim: drop their queued notifications rather than wake once per commit.
                for _ in conn.notifies(timeout=0):
                    pass
            return woke
        except psycopg.Error as exc:
            log.warning(
                "outbox listener lost its connection",
                extra={"event.action": "outbox_listener_lost", "error.message": str(exc)},
            )
            self.close()
            # The database may have restarted with commits we never heard of.
            return True

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connection(self) -> psycopg.Connection[tuple[object, ...]] | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        now = self._clock()
        if now < self._next_connect:
            return None
        self._next_connect = now + self._reconnect_interval
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error as exc:
            log.warning(
                "outbox listener cannot connect; polling only",
                extra={"event.action": "outbox_listener_unavailable", "error.message": str(exc)},
            )
            return None
        self._conn = conn
        log.info(
            "outbox listener connected",
            extra={"event.action": "outbox_listener_connected", "channel": self._channel},
        )
        return conn
