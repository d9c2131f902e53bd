"""The outbox store on a real PostgreSQL: claim rules, lease ownership, retention, stats."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from outbox_support import insert_events, make_event, wait_until
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.errors import StoreUnavailableError
from outbox.store import OutboxStore, add_events

pytestmark = pytest.mark.postgres

TOPIC = "store-test"


def _ids(engine: Engine, where: str = "true") -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(text(f"SELECT id FROM outbox WHERE {where} ORDER BY id")).scalars()
        )


def test_claim_leases_rows_in_id_order_with_db_time(engine: Engine, store: OutboxStore) -> None:
    insert_events(
        engine, [make_event(TOPIC, f"k{i % 3}", i, traceparent="00-ab-cd-01") for i in range(6)]
    )

    claimed = store.claim(4, "r1", lease_seconds=30)

    assert [e.id for e in claimed] == _ids(engine)[:4]
    assert [e.attempts for e in claimed] == [1, 1, 1, 1]
    assert claimed[0].payload == b'{"key": "k0", "seq": 0}'
    assert claimed[0].headers["traceparent"] == "00-ab-cd-01"
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT locked_by, locked_until - now() AS lease FROM outbox WHERE id = :id"),
            {"id": claimed[0].id},
        ).one()
    assert row.locked_by == "r1"
    assert timedelta(seconds=25) < row.lease <= timedelta(seconds=30)


def test_a_key_is_never_claimed_past_an_earlier_row_held_elsewhere(
    engine: Engine, store: OutboxStore
) -> None:
    # ids 1..6 with keys a b a c b c: r1 leases 1 (a) and 2 (b) only.
    insert_events(engine, [make_event(TOPIC, k, i) for i, k in enumerate("abacbc")])
    first = store.claim(2, "r1", lease_seconds=30)
    assert [e.key for e in first] == ["a", "b"]

    second = store.claim(10, "r2", lease_seconds=30)

    # a's and b's later rows wait for r1; c is free.
    assert [e.key for e in second] == ["c", "c"]


def test_a_blocked_key_does_not_use_up_the_claim_window(engine: Engine, store: OutboxStore) -> None:
    insert_events(engine, [make_event(TOPIC, k, i) for i, k in enumerate("aaaab")])
    assert [e.key for e in store.claim(1, "r1", lease_seconds=30)] == ["a"]

    # a's three later rows come first by id, but are passed over for b.
    assert [e.key for e in store.claim(2, "r2", lease_seconds=30)] == ["b"]


def test_a_row_skip_locked_by_an_in_flight_claim_holds_back_its_key(
    engine: Engine, store: OutboxStore
) -> None:
    insert_events(engine, [make_event(TOPIC, k, i) for i, k in enumerate("abab")])
    first_a = _ids(engine)[0]
    # Another relay's claim is mid-statement: it has locked row 1 but not leased it yet.
    with engine.connect() as other:
        other.execute(text("SELECT id FROM outbox WHERE id = :id FOR UPDATE"), {"id": first_a})

        claimed = store.claim(10, "r2", lease_seconds=30)

        other.rollback()
    assert [e.key for e in claimed] == ["b", "b"]


def test_published_rows_do_not_hold_back_their_key(engine: Engine, store: OutboxStore) -> None:
    insert_events(engine, [make_event(TOPIC, "a", i) for i in range(3)])
    first = store.claim(1, "r1", lease_seconds=30)
    assert store.mark_published([first[0].id], "r1") == 1

    assert [e.payload for e in store.claim(10, "r2", lease_seconds=30)] == [
        b'{"key": "a", "seq": 1}',
        b'{"key": "a", "seq": 2}',
    ]


def test_only_the_lease_owner_marks_published(engine: Engine, store: OutboxStore) -> None:
    insert_events(engine, [make_event(TOPIC, "a", 0)])
    [event] = store.claim(1, "dead", lease_seconds=0.2)
    # The lease runs out and a second relay takes the row over.
    wait_until(lambda: bool(store.claim(1, "alive", lease_seconds=30)), 10, "lease expiry")

    assert store.mark_published([event.id], "dead") == 0
    assert store.mark_published([event.id], "alive") == 1
    assert _ids(engine, "published_at IS NOT NULL AND locked_until IS NULL") == [event.id]


def test_a_dead_relays_lease_expires_and_another_claims_the_row(
    engine: Engine, store: OutboxStore
) -> None:
    insert_events(engine, [make_event(TOPIC, "a", 0), make_event(TOPIC, "a", 1)])
    dead = store.claim(10, "dead", lease_seconds=1)
    assert len(dead) == 2
    assert store.claim(10, "alive", lease_seconds=30) == []

    taken: list[int] = []

    def claimed_by_alive() -> bool:
        taken.extend(e.attempts for e in store.claim(10, "alive", lease_seconds=30))
        return bool(taken)

    wait_until(claimed_by_alive, 10, "the dead relay's lease to expire")

    assert taken == [2, 2]


def test_release_records_the_error_and_frees_or_holds_back_the_row(
    engine: Engine, store: OutboxStore
) -> None:
    insert_events(engine, [make_event(TOPIC, "a", 0), make_event(TOPIC, "a", 1)])
    first, _ = store.claim(10, "r1", lease_seconds=30)
    assert store.release_failed([first.id], "someone-else", "nope") == 0

    assert store.release_failed([first.id], "r1", "_MSG_TIMED_OUT: boom", retry_after=60) == 1
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT last_error, locked_by, locked_until > now() AS held"
                " FROM outbox WHERE id = :id"
            ),
            {"id": first.id},
        ).one()
    assert (row.last_error, row.locked_by, row.held) == ("_MSG_TIMED_OUT: boom", None, True)
    # Held back, it still holds back its key's later row (which r1 still leases anyway).
    assert store.claim(10, "r2", lease_seconds=30) == []

    store.release_failed([first.id], "r1", "x")  # no longer r1's: a no-op
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET locked_until = NULL, locked_by = NULL"))
    again = store.claim(10, "r2", lease_seconds=30)
    assert (again[0].id, again[0].attempts) == (first.id, 2)


def test_retention_deletes_only_published_rows_older_than_it(
    engine: Engine, store: OutboxStore
) -> None:
    insert_events(engine, [make_event(TOPIC, f"k{i}", i) for i in range(9)])
    ids = _ids(engine)
    old_published, new_published, old_pending = ids[:5], ids[5:7], ids[7:]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = ANY(:ids)"
            ),
            {"ids": old_published},
        )
        conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - interval '30 minutes'"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": new_published},
        )
        conn.execute(
            text("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE id = ANY(:ids)"),
            {"ids": old_pending},
        )

    deleted = store.delete_published_before(timedelta(hours=1), batch_size=2)

    assert deleted == 5
    assert _ids(engine) == new_published + old_pending
    assert store.delete_published_before(3600) == 0


def test_pending_stats_count_and_age(engine: Engine, store: OutboxStore) -> None:
    assert store.pending_stats() == (0, 0.0)
    insert_events(engine, [make_event(TOPIC, "a", i) for i in range(3)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE outbox SET created_at = now() - interval '90 seconds'"
                " WHERE id = (SELECT min(id) FROM outbox)"
            )
        )
        conn.execute(
            text("UPDATE outbox SET published_at = now() WHERE id = (SELECT max(id) FROM outbox)")
        )

    pending, age = store.pending_stats()

    assert pending == 2
    assert 90 <= age < 120


async def test_async_writer_joins_the_callers_transaction(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    event = make_event(TOPIC, "a", 0)
    async with async_engine.connect() as conn:
        await conn.begin()
        await add_events(conn, [event])
        await conn.rollback()
    assert _ids(engine) == []

    async with async_engine.begin() as conn:
        await add_events(conn, [event, make_event(TOPIC, "a", 1)])
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, headers FROM outbox ORDER BY id")).all()
    assert rows[0].event_id == event.event_id
    assert rows[0].headers == {"event_type": "TestEvent", "schema_version": "1"}
    assert len(rows) == 2


def test_an_unreachable_database_is_an_outbox_error() -> None:
    from sqlalchemy import create_engine

    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(StoreUnavailableError):
        OutboxStore(engine).claim(10, "r", lease_seconds=30)
    engine.dispose()


def test_event_ids_are_unique(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    event = make_event(TOPIC, "a", 0)
    insert_events(engine, [event])
    with pytest.raises(IntegrityError):
        insert_events(engine, [event])
    assert uuid.UUID(str(event.event_id))
