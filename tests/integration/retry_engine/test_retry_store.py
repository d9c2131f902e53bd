"""The retry table on real PostgreSQL: park, claim (due, SKIP LOCKED, leases, key order), finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retry.errors import LeaseLost
from retry.model import Classification, FailureKind, Message
from retry.rows import ORDERING_ERROR, RetryFilter
from retry.schema import retry_messages
from retry.store import RetryStore

pytestmark = pytest.mark.postgres

TIMEOUT = Classification(
    kind=FailureKind.RETRYABLE, error_class="timeout", reason="read timed out", retry_after=None
)
OUT_OF_STOCK = Classification(kind=FailureKind.TERMINAL, error_class="http_409", reason="no stock")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    engine = create_async_engine(url, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> RetryStore:
    return RetryStore(engine)


def msg(n: int, *, key: str | None = "k", topic: str = "orders", value: bytes = b"{}") -> Message:
    return Message(
        topic=topic,
        value=value,
        key=key,
        partition=n % 3,
        offset=n,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        headers={"event_id": f"e-{n}", "event_type": "OrderPlaced"},
        consumer_group="g",
    )


async def park(
    store: RetryStore,
    message: Message,
    *,
    delay: float | None = None,
    state: str = "PENDING",
    cls: Classification = TIMEOUT,
    attempt: int = 1,
    handler: str = "h",
) -> int:
    async with store._engine.begin() as conn:
        parked = await store.park(
            conn,
            message,
            handler=handler,
            classification=cls,
            attempt=attempt,
            delay_seconds=delay,
            max_attempts=5,
            state=state,
        )
    return parked.id


async def expire_leases(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE retry_messages SET lease_expires_at = now() - interval '1 second'")
        )


async def test_park_keeps_dlq_metadata_and_history(store: RetryStore) -> None:
    raw = b"\xff\xfe not json \x00"
    row_id = await park(store, msg(7, value=raw), delay=30)
    row = await store.get(row_id)
    assert row is not None
    assert row.payload == raw
    assert row.to_message() == msg(7, value=raw)
    assert (row.source_topic, row.source_partition, row.source_offset) == ("orders", 1, 7)
    assert row.consumer_group == "g" and row.message_id == "e-7"
    assert (row.state, row.attempts, row.max_attempts, row.error_class) == (
        "PENDING",
        1,
        5,
        "timeout",
    )
    assert row.last_error == "read timed out"
    delay = (row.next_attempt_at - row.created_at).total_seconds()
    assert 29.9 < delay < 30.5
    [entry] = row.history
    assert entry["outcome"] == "parked" and entry["attempt"] == 1 and entry["by"] == "consumer"
    assert entry["error_class"] == "timeout" and entry["max_attempts"] == 5
    assert datetime.fromisoformat(entry["at"]).tzinfo is not None


async def test_duplicate_park_is_ignored(store: RetryStore) -> None:
    first = await park(store, msg(1))
    async with store._engine.begin() as conn:
        again = await store.park(
            conn,
            msg(1),
            handler="h",
            classification=OUT_OF_STOCK,
            attempt=1,
            delay_seconds=None,
            max_attempts=5,
            state="DEAD",
        )
    assert again.id == first and not again.created
    counts = await store.counts_by_state()
    assert counts["PENDING"] == 1 and counts["DEAD"] == 0


async def test_garbage_key_and_headers_are_stored(store: RetryStore) -> None:
    garbage = Message(
        topic="orders",
        value=b"\x00\x01",
        key="bad\x00key\udcff",
        partition=0,
        offset=1,
        headers={"event_id": "id\x00x", "h\x00": "\udcfe"},
    )
    row = await store.get(await park(store, garbage))
    assert row is not None
    assert row.key == "bad\\x00key\\udcff" and row.message_id == "id\\x00x"
    assert row.payload == b"\x00\x01"
    async with store._engine.connect() as conn:
        assert await store.has_open_for_key(conn, "orders", garbage.key) == row.id


async def test_park_claim_complete(store: RetryStore) -> None:
    row_id = await park(store, msg(1))
    [claimed] = await store.claim_due(10, "s1", 30)
    assert claimed.id == row_id and claimed.state == "IN_PROGRESS"
    assert claimed.lease_owner == "s1" and claimed.lease_expires_at is not None
    assert await store.claim_due(10, "s2", 30) == []
    async with store._engine.begin() as conn:
        done = await store.complete(conn, row_id, "s1")
    assert (done.state, done.attempts, done.lease_owner) == ("SUCCEEDED", 2, None)
    assert [e["outcome"] for e in done.history] == ["parked", "succeeded"]


async def test_claim_respects_next_attempt_at(store: RetryStore) -> None:
    await park(store, msg(1, key="a"), delay=3600)
    due = await park(store, msg(2, key="b"))
    assert [r.id for r in await store.claim_due(10, "s1", 30)] == [due]


async def test_claim_orders_by_due_time(store: RetryStore, engine: AsyncEngine) -> None:
    ids = [await park(store, msg(n, key=f"k{n}")) for n in range(3)]
    async with engine.begin() as conn:  # the last parked became due first
        await conn.execute(
            update(retry_messages)
            .where(retry_messages.c.id == ids[2])
            .values(next_attempt_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert [r.id for r in await store.claim_due(2, "s1", 30)] == [ids[2], ids[0]]


async def test_expired_lease_is_reclaimed(store: RetryStore, engine: AsyncEngine) -> None:
    row_id = await park(store, msg(1))
    await store.claim_due(10, "killed", 30)  # this scheduler is kill -9'd now
    assert await store.claim_due(10, "s2", 30) == []
    await expire_leases(engine)
    [again] = await store.claim_due(10, "s2", 30)
    assert again.id == row_id and again.lease_owner == "s2"
    # The killed scheduler's late result is refused.
    async with engine.begin() as conn:
        with pytest.raises(LeaseLost):
            await store.complete(conn, row_id, "killed")


@pytest.mark.parametrize("op", ["complete", "reschedule", "mark_dead", "release"])
async def test_finishing_checks_the_lease(store: RetryStore, op: str) -> None:
    row_id = await park(store, msg(1))
    await store.claim_due(1, "s1", 30)
    with pytest.raises(LeaseLost):
        async with store._engine.begin() as conn:
            if op == "complete":
                await store.complete(conn, row_id, "other")
            elif op == "reschedule":
                await store.reschedule(
                    conn, row_id, "other", classification=TIMEOUT, delay_seconds=1
                )
            elif op == "mark_dead":
                await store.mark_dead(conn, row_id, "other", OUT_OF_STOCK)
            else:
                await store.release(row_id, "other")
    row = await store.get(row_id)
    assert row is not None and row.state == "IN_PROGRESS" and len(row.history) == 1


async def test_reschedule_mark_dead_release(store: RetryStore) -> None:
    row_id = await park(store, msg(1))
    await store.claim_due(1, "s1", 30)
    async with store._engine.begin() as conn:
        row = await store.reschedule(conn, row_id, "s1", classification=TIMEOUT, delay_seconds=60)
    assert (row.state, row.attempts, row.lease_owner) == ("PENDING", 2, None)
    assert 59 < (row.next_attempt_at - row.updated_at).total_seconds() < 61
    await expire_due(store, row_id)
    await store.claim_due(1, "s1", 30)
    await store.release(row_id, "s1", reason="breaker open")
    row2 = await store.get(row_id)
    assert row2 is not None and (row2.state, row2.attempts) == ("PENDING", 2)
    await store.claim_due(1, "s1", 30)
    async with store._engine.begin() as conn:
        dead = await store.mark_dead(conn, row_id, "s1", OUT_OF_STOCK)
    assert (dead.state, dead.attempts, dead.error_class) == ("DEAD", 3, "http_409")
    outcomes = [e["outcome"] for e in dead.history]
    assert outcomes == ["parked", "rescheduled", "released", "dead"]


async def expire_due(store: RetryStore, row_id: int) -> None:
    async with store._engine.begin() as conn:
        await conn.execute(
            text("UPDATE retry_messages SET next_attempt_at = now() WHERE id = :id"), {"id": row_id}
        )


async def test_per_key_ordering(store: RetryStore) -> None:
    head = await park(store, msg(1, key="order-1"))
    async with store._engine.connect() as conn:
        assert await store.has_open_for_key(conn, "orders", "order-1") == head
        assert await store.has_open_for_key(conn, "orders", "order-2") is None
        assert await store.has_open_for_key(conn, "other-topic", "order-1") is None
    behind = Classification(
        kind=FailureKind.RETRYABLE,
        error_class=ORDERING_ERROR,
        reason=f"parked behind message #{head} for key order-1",
    )
    second = await park(store, msg(2, key="order-1"), cls=behind, attempt=0)
    third = await park(store, msg(3, key="order-1"), cls=behind, attempt=0)
    other = await park(store, msg(4, key="order-2"))
    unkeyed = [await park(store, msg(n, key=None)) for n in (5, 6)]

    claimed = await store.claim_due(10, "s1", 30)
    assert sorted(r.id for r in claimed) == sorted([head, other, *unkeyed])
    assert await store.claim_due(10, "s2", 30) == []
    current = head
    for step in (second, third):
        async with store._engine.begin() as conn:
            await store.complete(conn, current, "s1")
        claimed = await store.claim_due(10, "s1", 30)
        assert [r.id for r in claimed] == [step]
        assert claimed[0].attempts == 0 and claimed[0].error_class == ORDERING_ERROR
        # While the head runs, nothing else for the key is handed out.
        assert await store.claim_due(10, "s2", 30) == []
        current = step


async def test_dead_head_unblocks_the_key(store: RetryStore) -> None:
    head = await park(store, msg(1))
    second = await park(store, msg(2), attempt=0)
    await store.claim_due(10, "s1", 30)
    async with store._engine.begin() as conn:
        await store.mark_dead(conn, head, "s1", OUT_OF_STOCK)
    assert [r.id for r in await store.claim_due(10, "s1", 30)] == [second]


async def test_requeued_earlier_row_waits_for_a_running_later_one(store: RetryStore) -> None:
    head = await park(store, msg(1), state="DEAD", cls=OUT_OF_STOCK)
    later = await park(store, msg(2))
    assert [r.id for r in await store.claim_due(10, "s1", 30)] == [later]
    result = await store.requeue(ids=[head], actor="op")
    assert result.requeued == 1
    assert await store.claim_due(10, "s2", 30) == []  # `later` holds the key
    async with store._engine.begin() as conn:
        await store.complete(conn, later, "s1")
    assert [r.id for r in await store.claim_due(10, "s2", 30)] == [head]


async def test_two_claimers_never_share_a_row(store: RetryStore, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO retry_messages (source_topic, message_id, key, payload, handler,
                                            error_class, attempts, max_attempts)
                SELECT 'orders', 'm-' || n, 'k-' || n, '\\x00'::bytea, 'h', 'timeout', 1, 5
                FROM generate_series(1, 500) AS n
                """
            )
        )
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def claimer(owner: str) -> None:
        while rows := await store.claim_due(7, owner, 30):
            for row in rows:
                seen[owner].append(row.id)
                async with engine.begin() as conn:
                    await store.complete(conn, row.id, owner)
            await asyncio.sleep(0)

    await asyncio.gather(claimer("a"), claimer("b"))
    everything = seen["a"] + seen["b"]
    assert len(everything) == 500 and len(set(everything)) == 500
    assert seen["a"] and seen["b"]
    assert (await store.counts_by_state())["SUCCEEDED"] == 500


async def test_filter_rejects_unknown_state() -> None:
    with pytest.raises(ValueError, match="unknown state"):
        RetryFilter(states=("PARKED",))


async def test_handlers_are_separate_pipelines(store: RetryStore) -> None:
    mine = await park(store, msg(1), handler="h")
    theirs = await park(store, msg(1), handler="other")  # same event, other consumer group
    assert mine != theirs
    async with store._engine.connect() as conn:
        assert await store.has_open_for_key(conn, "orders", "k", handler="other") == theirs
        assert await store.has_open_for_key(conn, "orders", "k") == mine
    [claimed] = await store.claim_due(10, "s1", 30, handler="other")
    assert claimed.id == theirs  # not ordered behind the other handler's row
    [claimed] = await store.claim_due(10, "s1", 30, handler="h")
    assert claimed.id == mine
