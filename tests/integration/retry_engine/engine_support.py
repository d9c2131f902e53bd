"""A tiny application for the batch engine's tests, on real PostgreSQL.

`App` is a `BatchHandler`: it fails a message with whatever `failures[message_id]` holds
next, and writes its outcomes into its own table inside the engine's transaction, so a
test sees that both commit (or roll back) together. `StubBreaker` records exactly what
the engine asked of the breaker (one test per module runs the real shared breaker).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry import batch_sql
from retry.batch import BatchProcessor
from retry.batch_model import Delivery, Outcome
from retry.classify import Classifier
from retry.errors import UndecodableMessage
from retry.model import Message
from retry.policy import ExponentialPolicy, PolicyTable
from retry.schema import processed_events, retry_messages
from retry.store import RetryStore

# delay(n) = 10, 20, 40 s; four attempts in all.
POLICY = ExponentialPolicy(base_delay=10, factor=2, max_delay=600, jitter=0, max_attempts=4)
POISON = b"poison"


@dataclass
class StubBreaker:
    allowed: bool = True
    budget: int | None = None
    """Permits left (None: unlimited)."""
    current: str = "CLOSED"
    asked: int = 0
    records: list[bool] = field(default_factory=list)
    released: int = 0

    async def allow(self) -> bool:
        self.asked += 1
        if self.budget is not None:
            self.budget -= 1
            return self.budget >= 0
        return self.allowed

    async def record(self, success: bool) -> None:
        self.records.append(success)

    async def release(self) -> None:
        self.released += 1

    async def state(self) -> str:
        return self.current


class App:
    def __init__(self, name: str = "test-handler") -> None:
        self.name = name
        self.failures: dict[str, list[Exception]] = {}
        self.calls: list[tuple[str, int]] = []
        self.skip: set[str] = set()
        """Message ids handled without the dependency (like a cancelled order)."""
        self.call_raises: Exception | None = None
        self.fail_record = False
        self.gate: asyncio.Event | None = None
        """When set, `call` waits for it (to hold two members inside one event)."""

    async def prepare(
        self, conn: AsyncConnection[Any], messages: Sequence[Message]
    ) -> list[object]:
        return [UndecodableMessage("not JSON") if m.value == POISON else m for m in messages]

    def calls_dependency(self, prepared: object) -> bool:
        return isinstance(prepared, Message) and prepared.message_id not in self.skip

    async def call(self, prepared: Sequence[object], attempts: Sequence[int]) -> list[object]:
        if self.gate is not None:
            await self.gate.wait()
        if self.call_raises is not None:
            raise self.call_raises
        results: list[object] = []
        for item, attempt in zip(prepared, attempts, strict=True):
            assert isinstance(item, Message)
            self.calls.append((item.message_id, attempt))
            queue = self.failures.get(item.message_id)
            results.append(queue.pop(0) if queue else f"ok:{item.message_id}")
        return results

    async def record(self, conn: AsyncConnection[Any], outcomes: Sequence[Outcome]) -> None:
        if self.fail_record:
            raise RuntimeError("application bug in record")
        if outcomes:
            await conn.execute(
                "INSERT INTO app_outcomes (message_id, what) "
                "SELECT * FROM unnest(%(ids)s::text[], %(what)s::text[])",
                {
                    "ids": [o.message.message_id for o in outcomes],
                    "what": [f"{o.verdict.value} attempt {o.attempt}" for o in outcomes],
                },
            )


@dataclass
class Rig:
    engine: AsyncEngine
    pool: AsyncConnectionPool[Any]
    store: RetryStore
    app: App
    breaker: StubBreaker
    processor: BatchProcessor
    registry: CollectorRegistry

    def engine_for(
        self, app: App, breaker: StubBreaker | None = None, *, owner: str = "consumer"
    ) -> BatchProcessor:
        return BatchProcessor(
            self.pool,
            app,
            Classifier(unexpected_max_attempts=3),
            PolicyTable(default=POLICY),
            breaker or self.breaker,
            rng=random.Random(7),
            registry=self.registry,
            owner=owner,
        )

    async def live(self, *messages: Message) -> list[str]:
        outcomes = await self.processor.process([Delivery(message=m) for m in messages])
        return [o.verdict.value for o in outcomes]

    async def rows(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(retry_messages).order_by(retry_messages.c.id))
            return [dict(r) for r in result.mappings()]

    async def processed(self, handler: str = "test-handler") -> dict[str, str]:
        async with self.engine.connect() as conn:
            query = select(processed_events).where(processed_events.c.handler == handler)
            return {r.event_id: r.outcome for r in await conn.execute(query)}

    async def app_outcomes(self) -> list[tuple[str, str]]:
        async with self.engine.connect() as conn:
            query = text("SELECT message_id, what FROM app_outcomes ORDER BY id")
            return [(r.message_id, r.what) for r in await conn.execute(query)]

    async def make_due(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE retry_messages SET next_attempt_at = now() WHERE state = 'PENDING'")
            )

    async def redrive_all(
        self, owner: str = "s1", processor: BatchProcessor | None = None
    ) -> list[str]:
        await self.make_due()
        rows = await self.store.claim_due(50, owner, 30, handler=self.app.name)
        engine = processor or self.engine_for(self.app, owner=owner)
        outcomes = await engine.process(
            [Delivery(message=r.to_message(), attempt=r.attempts + 1, row=r) for r in rows]
        )
        return [o.verdict.value for o in outcomes]

    async def park(self, n: int, *, key: str | None = None, handler: str | None = None) -> None:
        async with self.pool.connection() as conn:
            await batch_sql.park(
                conn,
                handler or self.app.name,
                [
                    batch_sql.ParkRow(
                        message=msg(n, key=key),
                        error_class="timeout",
                        reason="slow",
                        attempt=1,
                        max_attempts=5,
                        delay=0.0,
                        state="PENDING",
                        outcome="parked",
                    )
                ],
                by="test",
            )

    def consumed(self, outcome: str, error_class: str = "") -> float:
        value = self.registry.get_sample_value(
            "steadfast_consumed_messages_total", {"outcome": outcome, "error_class": error_class}
        )
        return value or 0.0


def msg(n: int, *, key: str | None = None, value: bytes = b'{"ok": true}') -> Message:
    return Message(
        topic="orders",
        value=value,
        key=key if key is not None else f"key-{n}",
        partition=0,
        offset=n,
        headers={"event_id": f"e-{n}"},
    )


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    engine = create_async_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE app_outcomes (id bigserial PRIMARY KEY, message_id text, what text)")
        )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    app, breaker, registry = App(), StubBreaker(), CollectorRegistry()
    rig = Rig(engine, pool, RetryStore(engine), app, breaker, None, registry)  # type: ignore[arg-type]
    rig.processor = rig.engine_for(app)
    yield rig
    await pool.close()
    await engine.dispose()
