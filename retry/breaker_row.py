"""One circuit breaker's `circuit_breakers` row: read it, or lock it, step it and write it back.

Each call is one short transaction; the caller (`retry.breaker.CircuitBreaker`) serialises
them and keeps the machine it gets back as its cache. The row is created on first use, and
again if an operator deletes it to reset the breaker.

The row's columns: state, opened_at (when the current OPEN began), half_open_permits
(permits taken in this half-open round), half_open_successes, forced ("OPEN"/"CLOSED"/NULL),
version (+1 per write), and window, a JSON object:
    {"bucket_seconds": 1.0, "buckets": [[bucket_index, ok, failed], ...],
     "episode_started_at": epoch | null, "half_open_at": epoch | null}
where episode_started_at is when the breaker last left CLOSED: a dependency that stays down
cycles OPEN -> HALF_OPEN -> OPEN, and "open too long" must measure the whole episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retry.breaker_machine import BreakerConfig, BreakerMachine
from retry.clock import Clock
from retry.schema import circuit_breakers

T = TypeVar("T")


class BreakerRow:
    """The row of breaker `name`. Not safe for concurrent calls: the caller holds a lock."""

    def __init__(self, engine: AsyncEngine, name: str, config: BreakerConfig, clock: Clock) -> None:
        self.name = name
        self._engine = engine
        self._config = config
        self._clock = clock
        self._exists = False

    async def read(self) -> tuple[BreakerMachine, int]:
        """The machine as the row holds it, and the row's version."""
        async with self._engine.begin() as conn:
            row = await self._select(conn, lock=False)
        self._exists = True  # committed: no need to insert it again
        return BreakerMachine.from_row(row, self._config), int(row["version"])

    async def apply(
        self, step: Callable[[BreakerMachine, float], T]
    ) -> tuple[BreakerMachine, int, T]:
        """Lock the row, run `step` on its machine at the clock's now, write back if changed."""
        async with self._engine.begin() as conn:
            # Soft state: if the database crashes, losing the last few outcomes is
            # harmless, and not waiting for the WAL flush shortens the row lock.
            await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            row = await self._select(conn, lock=True)
            machine = BreakerMachine.from_row(row, self._config)
            before = machine.to_row()
            result = step(machine, self._clock.now().timestamp())
            version = int(row["version"])
            values = machine.to_row()
            if values != before:
                version += 1
                await conn.execute(
                    update(circuit_breakers)
                    .where(circuit_breakers.c.name == self.name)
                    .values(**values, version=version, updated_at=self._clock.now())
                )
        self._exists = True  # committed: no need to insert it again
        return machine, version, result

    async def _select(self, conn: AsyncConnection, *, lock: bool) -> Mapping[str, Any]:
        query = select(circuit_breakers).where(circuit_breakers.c.name == self.name)
        if lock:
            query = query.with_for_update()
        if self._exists:
            row = (await conn.execute(query)).mappings().one_or_none()
            if row is not None:
                return dict(row)
        # First sync of this breaker, or an operator deleted the row to reset it.
        await conn.execute(
            insert(circuit_breakers)
            .values(name=self.name, **BreakerMachine(self._config).to_row())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return dict((await conn.execute(query)).mappings().one())
