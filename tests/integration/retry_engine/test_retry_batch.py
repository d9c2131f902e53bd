"""The batch engine on real PostgreSQL: every live path and every re-drive path."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from retry.batch import sweep_processed
from retry.batch_model import Delivery
from retry.breaker import CircuitBreaker
from retry.breaker_machine import BreakerConfig
from retry.clock import FakeClock
from retry.errors import CallFailed, UndecodableMessage
from tests.integration.retry_engine.engine_support import POISON, App, Rig, StubBreaker, msg

pytestmark = pytest.mark.postgres


# -- the live consumer ------------------------------------------------------------------


async def test_a_batch_succeeds_in_one_transaction(rig: Rig) -> None:
    assert await rig.live(msg(1), msg(2), msg(3)) == ["succeeded"] * 3
    assert await rig.processed() == {f"e-{n}": "succeeded" for n in (1, 2, 3)}
    assert await rig.app_outcomes() == [(f"e-{n}", "succeeded attempt 1") for n in (1, 2, 3)]
    assert await rig.rows() == []
    assert rig.breaker.records == [True] * 3
    assert rig.consumed("succeeded") == 3


async def test_redelivery_is_a_no_op(rig: Rig) -> None:
    await rig.live(msg(1))
    rig.app.failures["e-2"] = [CallFailed("timeout", "slow")]
    await rig.live(msg(2))
    assert await rig.live(msg(1), msg(2)) == ["duplicate", "duplicate"]
    assert rig.app.calls == [("e-1", 1), ("e-2", 1)]
    assert rig.consumed("duplicate") == 2


async def test_dedup_is_per_handler(rig: Rig) -> None:
    """A second handler on the topic does not take the first one's events as done."""
    await rig.live(msg(1))
    other = App("audit-trail")
    assert [
        o.verdict.value for o in await rig.engine_for(other).process([Delivery(message=msg(1))])
    ] == ["succeeded"]
    assert other.calls == [("e-1", 1)]
    assert await rig.processed("audit-trail") == {"e-1": "succeeded"}
    assert await rig.live(msg(1)) == ["duplicate"]


async def test_retention_forgets_old_events_only(rig: Rig) -> None:
    await rig.live(msg(1), msg(2))
    async with rig.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE processed_events SET processed_at = now() - interval '8 days' "
                "WHERE event_id = 'e-1'"
            )
        )
    assert await sweep_processed(rig.pool, 7 * 86400, chunk=1) == 1
    assert await rig.processed() == {"e-2": "succeeded"}


async def test_poison_is_dead_with_raw_bytes_and_takes_no_permit(rig: Rig) -> None:
    assert await rig.live(msg(1, value=POISON)) == ["dead"]
    [row] = await rig.rows()
    assert (row["state"], row["payload"], row["error_class"]) == ("DEAD", POISON, "decode")
    assert await rig.processed() == {"e-1": "dead"}
    assert rig.breaker.asked == 0  # a half-open probe permit is not spent on poison
    assert rig.breaker.records == []
    assert rig.consumed("dead", "decode") == 1


async def test_an_unreadable_record_is_parked_as_poison(rig: Rig) -> None:
    broken = Delivery(message=msg(1), broken=UndecodableMessage("the record could not be read"))
    outcomes = await rig.processor.process([broken, Delivery(message=msg(2))])
    assert [o.verdict.value for o in outcomes] == ["dead", "succeeded"]
    [row] = await rig.rows()
    assert (row["message_id"], row["error_class"]) == ("e-1", "decode")
    assert rig.app.calls == [("e-2", 1)]


async def test_terminal_is_dead_and_tells_the_breaker_the_dependency_answered(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("http_409", "out of stock")]
    assert await rig.live(msg(1)) == ["dead"]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["error_class"]) == ("DEAD", 1, "http_409")
    assert rig.breaker.records == [True]


async def test_retryable_is_parked_with_the_first_delay(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("http_503", "unavailable")]
    before = datetime.now(UTC)
    assert await rig.live(msg(1)) == ["parked"]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("PENDING", 1, 4)
    due = row["next_attempt_at"]
    assert before + timedelta(seconds=9) < due < datetime.now(UTC) + timedelta(seconds=11)
    assert await rig.processed() == {"e-1": "parked"}
    assert await rig.app_outcomes() == [("e-1", "parked attempt 1")]
    assert rig.breaker.records == [False]


async def test_retry_after_is_honoured(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("http_429", "slow down", retry_after=120)]
    await rig.live(msg(1))
    [row] = await rig.rows()
    assert 119 < (row["next_attempt_at"] - row["created_at"]).total_seconds() < 121


async def test_breaker_blocked_writes_nothing(rig: Rig) -> None:
    rig.breaker.allowed = False
    assert await rig.live(msg(1), msg(2)) == ["blocked", "blocked"]
    assert rig.app.calls == []
    assert await rig.rows() == [] and await rig.processed() == {}
    assert await rig.app_outcomes() == []


async def test_items_that_skip_the_dependency_pass_an_open_breaker(rig: Rig) -> None:
    rig.breaker.allowed = False
    rig.app.skip.add("e-1")
    assert await rig.live(msg(1), msg(2)) == ["succeeded", "blocked"]
    assert rig.breaker.asked == 1


async def test_a_handler_crash_is_parked_and_its_permits_go_back(rig: Rig) -> None:
    rig.app.call_raises = ZeroDivisionError("bug")
    assert await rig.live(msg(1), msg(2)) == ["parked", "parked"]
    rows = await rig.rows()
    assert {r["error_class"] for r in rows} == {"unexpected"}
    # The permits were taken and the dependency never saw the calls: both returned, so a
    # half-open breaker is not left waiting for probes that will never report.
    assert rig.breaker.released == 2 and rig.breaker.records == []


async def test_one_item_failing_inside_the_handler_returns_its_permit(rig: Rig) -> None:
    rig.app.failures["e-1"] = [KeyError("bug before the call")]
    assert await rig.live(msg(1)) == ["parked"]
    assert rig.breaker.released == 1 and rig.breaker.records == []


async def test_garbage_key_and_headers_survive(rig: Rig) -> None:
    garbage = msg(5, key="\x00\udcff").__class__(
        topic="orders",
        value=b"\xff",
        key="\x00\udcff",
        partition=1,
        offset=5,
        headers={"event_id": "\x00bad\udcfe"},
    )
    rig.app.failures[garbage.message_id] = [CallFailed("timeout", "slow")]
    assert await rig.live(garbage) == ["parked"]
    assert await rig.live(garbage) == ["duplicate"]
    assert await rig.redrive_all() == ["succeeded"]
    assert set(await rig.processed()) == {"\\x00bad\\udcfe"}


async def test_a_failing_record_still_parks_the_batch(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow")]
    rig.app.fail_record = True
    assert await rig.live(msg(1), msg(2)) == ["parked", "parked"]
    rows = await rig.rows()
    assert [(r["message_id"], r["error_class"]) for r in rows] == [
        ("e-1", "timeout"),
        ("e-2", "unexpected"),  # its side effect happened; record runs again on re-drive
    ]
    assert await rig.app_outcomes() == []  # the application's half rolled back, alone


async def test_a_keys_events_run_in_offset_order_and_wait_behind_a_parked_one(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow")]
    batch = [msg(1, key="A"), msg(2, key="A"), msg(3, key="B"), msg(4, key="A"), msg(5, key="B")]
    assert await rig.live(*batch) == [
        "parked",
        "parked_behind",
        "succeeded",
        "parked_behind",
        "succeeded",
    ]
    # Waves: the first event of every key together, then the second...
    assert rig.app.calls == [("e-1", 1), ("e-3", 1), ("e-5", 1)]
    rows = await rig.rows()
    assert [(r["message_id"], r["attempts"], r["error_class"]) for r in rows] == [
        ("e-1", 1, "timeout"),
        ("e-2", 0, "ordering"),
        ("e-4", 0, "ordering"),
    ]
    # A later batch sees the open row and parks behind it too, without a call.
    assert await rig.live(msg(6, key="A")) == ["parked_behind"]
    assert rows[1]["last_error"] == "parked behind offset 1 for key A"
    # One head per key per claim: re-drive rounds keep the order the events came in.
    for expected in ("e-1", "e-2", "e-4", "e-6"):
        assert await rig.redrive_all() == ["succeeded"]
        assert rig.app.calls[-1][0] == expected


async def test_two_members_holding_one_event_record_it_once(rig: Rig) -> None:
    """A rebalance (or a consumer paused past its session) lets two members work on one
    event; the outcome write re-checks under the event's lock, so only one records it."""
    gate = asyncio.Event()
    first, second = App(), App()
    first.gate = second.gate = gate
    a, b = rig.engine_for(first), rig.engine_for(second)
    both = asyncio.gather(
        a.process([Delivery(message=msg(1))]), b.process([Delivery(message=msg(1))])
    )
    await asyncio.sleep(0.2)  # both have looked the event up and are inside the call
    gate.set()
    verdicts = sorted(o.verdict.value for batch in await both for o in batch)
    assert verdicts == ["duplicate", "succeeded"]
    assert await rig.app_outcomes() == [("e-1", "succeeded attempt 1")]


# -- the re-drive -------------------------------------------------------------------------


async def test_redrive_success(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.live(msg(1))
    assert await rig.redrive_all() == ["succeeded"]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("SUCCEEDED", 2, None)
    assert (await rig.app_outcomes())[-1] == ("e-1", "succeeded attempt 2")


async def test_retryable_exhaustion_is_dead(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(10)]
    await rig.live(msg(1))
    outcomes = [o for _ in range(4) for o in await rig.redrive_all()]
    assert outcomes == ["parked", "parked", "dead"]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"]) == ("DEAD", 4)
    assert [a for _, a in rig.app.calls] == [1, 2, 3, 4]


async def test_rescheduled_delay_grows_with_attempts(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(2)]
    await rig.live(msg(1))
    await rig.redrive_all()
    [row] = await rig.rows()
    assert 19 < (row["next_attempt_at"] - row["updated_at"]).total_seconds() < 21  # delay(2)


async def test_unexpected_exception_has_a_low_cap(rig: Rig) -> None:
    rig.app.failures["e-1"] = [RuntimeError("bug") for _ in range(10)]
    assert await rig.live(msg(1)) == ["parked"]
    outcomes = [o for _ in range(4) for o in await rig.redrive_all()]
    assert outcomes == ["parked", "dead"]  # cap 3 < the policy's 4
    assert len(rig.app.calls) == 3


async def test_redrive_with_breaker_open_releases_the_row(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.live(msg(1))
    rig.breaker.allowed = False
    assert await rig.redrive_all() == ["blocked"]
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("PENDING", 1, None)
    assert len(rig.app.calls) == 1


async def test_redrive_after_lease_lost_drops_the_result(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow")]
    await rig.live(msg(1))
    await rig.make_due()
    [row] = await rig.store.claim_due(1, "slow", 30)
    async with rig.engine.begin() as conn:
        await conn.execute(text("UPDATE retry_messages SET lease_expires_at = now()"))
    [stolen] = await rig.store.claim_due(1, "fast", 30)
    slow = rig.engine_for(rig.app)
    [lost] = await slow.process([Delivery(message=row.to_message(), attempt=2, row=row)])
    assert lost.verdict.value == "lease_lost"
    fast = rig.engine_for(rig.app)
    [won] = await fast.process([Delivery(message=stolen.to_message(), attempt=2, row=stolen)])
    assert won.verdict.value == "succeeded"


async def test_requeued_exhausted_row_gets_a_full_round(rig: Rig) -> None:
    rig.app.failures["e-1"] = [CallFailed("timeout", "slow") for _ in range(5)]
    await rig.live(msg(1))
    while (await rig.rows())[0]["state"] != "DEAD":
        await rig.redrive_all()
    result = await rig.store.requeue(ids=[(await rig.rows())[0]["id"]], actor="op")
    assert result.requeued == 1
    [row] = await rig.rows()
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("PENDING", 4, 8)
    assert await rig.redrive_all() == ["parked"]  # attempt 5 fails
    [row] = await rig.rows()
    assert 9 < (row["next_attempt_at"] - row["updated_at"]).total_seconds() < 11  # delay(1)
    assert await rig.redrive_all() == ["succeeded"]


async def test_with_the_shared_breaker(rig: Rig) -> None:
    breaker = CircuitBreaker(
        rig.engine,
        BreakerConfig(min_calls=3, window_seconds=10, open_seconds=30),
        name="warehouse",
        clock=FakeClock(),
    )
    engine = rig.engine_for(rig.app, breaker)  # type: ignore[arg-type]
    for n in range(3):
        rig.app.failures[f"e-{n}"] = [CallFailed("http_503", "down")]
    outcomes = await engine.process([Delivery(message=msg(n)) for n in range(3)])
    assert [o.verdict.value for o in outcomes] == ["parked"] * 3
    assert await breaker.state() == "OPEN"
    [blocked] = await engine.process([Delivery(message=msg(9))])
    assert blocked.verdict.value == "blocked" and ("e-9", 1) not in rig.app.calls
    assert await rig.redrive_all(processor=engine) == ["blocked"] * 3
    assert {r["state"] for r in await rig.rows()} == {"PENDING"}
    await breaker.force("CLOSED", "test")
    [ok] = await engine.process([Delivery(message=msg(9))])
    assert ok.verdict.value == "succeeded"


async def test_a_rebuilt_engine_shares_the_registry(rig: Rig) -> None:
    again = rig.engine_for(App())  # a consumer runtime restarting
    await again.process([Delivery(message=msg(1))])
    assert rig.consumed("succeeded") == 1


async def test_an_outage_meets_the_canary_not_the_whole_batch(rig: Rig) -> None:
    """The breaker learns only from answers: the first calls of a wave go out alone, and
    the rest ask the breaker again, so an outage parks a canary's worth, not a batch."""

    class Tripping(StubBreaker):
        async def record(self, success: bool) -> None:
            await super().record(success)
            if self.records.count(False) >= 10:
                self.allowed = False  # the shared breaker opening

    breaker = Tripping()
    engine = rig.engine_for(rig.app, breaker)
    for n in range(100):
        rig.app.failures[f"e-{n}"] = [CallFailed("http_503", "down")]
    verdicts = [
        o.verdict.value
        for o in await engine.process([Delivery(message=msg(n)) for n in range(100)])
    ]
    assert verdicts.count("parked") == 20 and verdicts.count("blocked") == 80
    assert len(rig.app.calls) == 20
