"""A token bucket kept in one PostgreSQL row: a rate limit for the whole cluster.

Every scheduler instance takes its tokens from the same `rate_limits` row, so N
schedulers together re-drive at the configured rate, not N times it. A take refills the
bucket by the time since its last update (the database's clock, so instances need not
agree on time) and hands out up to the number asked for, in one statement under the
row's lock. Tokens taken and not used (fewer rows were due) are given back.

Ours, not a library's: the shared bucket is part of the pattern (a re-drive budget every
instance respects), and it must live where the instances already meet, the database.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

ENSURE_SQL = """
INSERT INTO rate_limits (name, tokens, rate, burst, updated_at)
VALUES (%(name)s, %(burst)s, %(rate)s, %(burst)s, clock_timestamp())
ON CONFLICT (name) DO NOTHING
"""

TAKE_SQL = """
WITH cur AS (
    SELECT name,
           least(%(burst)s::float8, tokens + %(rate)s::float8 * greatest(0.0,
                 extract(epoch FROM clock_timestamp() - updated_at)::float8)) AS avail
      FROM rate_limits WHERE name = %(name)s
       FOR UPDATE
), granted AS (
    SELECT name, avail,
           CASE WHEN avail >= %(least)s THEN least(%(want)s::int, floor(avail)::int) ELSE 0 END
               AS n
      FROM cur
)
UPDATE rate_limits AS r
   SET tokens = g.avail - g.n, rate = %(rate)s, burst = %(burst)s,
       updated_at = clock_timestamp()
  FROM granted AS g
 WHERE r.name = g.name
RETURNING g.n, g.avail - g.n
"""

GIVE_BACK_SQL = """
UPDATE rate_limits SET tokens = least(burst, tokens + %(n)s) WHERE name = %(name)s
"""


@dataclass(frozen=True)
class Grant:
    tokens: int
    wait_seconds: float
    """When `tokens` is 0: how long until the next token (a hint; others may take it)."""


class SharedTokenBucket:
    def __init__(
        self, pool: AsyncConnectionPool[Any], name: str, rate_per_second: float, burst: int
    ) -> None:
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)) or burst < 1:
            raise ValueError("rate_per_second must be > 0 and burst >= 1")
        self._pool = pool
        self.name = name
        self.rate = float(rate_per_second)
        self.burst = burst

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "burst": float(self.burst), **extra}

    async def take(self, want: int, least: int = 1) -> Grant:
        """Up to `want` tokens now, or none while fewer than `least` are available.

        `least` keeps a waiting instance from taking tokens one at a time (a round trip
        each) while another takes them as they come.
        """
        least = max(1, min(least, want, self.burst))
        params = self._params(want=want, least=float(least))
        async with self._pool.connection() as conn:
            row = await (await conn.execute(TAKE_SQL, params)).fetchone()
            if row is None:  # the first instance to ask creates the bucket
                await conn.execute(ENSURE_SQL, self._params())
                row = await (await conn.execute(TAKE_SQL, params)).fetchone()
        assert row is not None
        tokens, left = int(row[0]), float(row[1])
        wait = 0.0 if tokens else max(0.001, (least - left) / self.rate)
        return Grant(tokens, wait)

    async def acquire(self, want: int, *, max_wait: float) -> int:
        """Up to `want` tokens, waiting up to `max_wait` seconds for a worthwhile share."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        least = max(1, min(want, self.burst) // 4)
        while True:
            grant = await self.take(want, least)
            if grant.tokens or loop.time() + grant.wait_seconds > deadline:
                return grant.tokens
            await asyncio.sleep(grant.wait_seconds)

    async def give_back(self, tokens: int) -> None:
        if tokens > 0:
            async with self._pool.connection() as conn:
                await conn.execute(GIVE_BACK_SQL, {"name": self.name, "n": float(tokens)})
