"""OrderedAcks: a partition's events are acked in offset order, and a dropped event keeps
everything after it unacked (untracked) so the commit cannot pass it."""

from __future__ import annotations

from services.reservation.acks import OrderedAcks


class Log:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.untracked: list[str] = []

    async def ack(self, event: str) -> None:
        self.acked.append(event)

    def untrack(self, event: str) -> None:
        self.untracked.append(event)


def _acks() -> tuple[OrderedAcks[str], Log]:
    log = Log()
    return OrderedAcks(log.ack, log.untrack), log


async def test_a_later_event_waits_for_the_earlier_one_of_its_partition() -> None:
    acks, log = _acks()
    for offset in (10, 11, 12):
        acks.track("p0", offset, f"e{offset}")
    acks.track("p1", 5, "other")

    await acks.done("p0", 12)
    await acks.done("p0", 11)
    await acks.done("p1", 5)
    assert log.acked == ["other"]  # p0 waits for 10, p1 does not wait for p0

    await acks.done("p0", 10)
    assert log.acked == ["other", "e10", "e11", "e12"]
    assert acks.pending() == 0


async def test_a_dropped_event_keeps_everything_after_it_unacked() -> None:
    acks, log = _acks()
    for offset in range(5):
        acks.track("p0", offset, f"e{offset}")
    await acks.done("p0", 3)  # done early, held back behind 0..2
    await acks.done("p0", 0)  # acked at once: nothing before it

    acks.drop("p0", 1)
    await acks.done("p0", 2)  # finished after the drop: not acked either
    await acks.done("p0", 4)

    assert log.acked == ["e0"]
    assert sorted(log.untracked) == ["e1", "e2", "e3", "e4"]
    assert acks.pending() == 0

    acks.track("p0", 5, "late")  # same generation, after the drop: never acked
    await acks.done("p0", 5)
    assert log.acked == ["e0"] and log.untracked[-1] == "late"


async def test_a_new_generation_tracks_afresh() -> None:
    acks, log = _acks()
    acks.track((1, "p0"), 7, "old")
    acks.drop((1, "p0"), 7)
    acks.track((2, "p0"), 7, "again")  # redelivered after the seek to the committed offset
    await acks.done((2, "p0"), 7)
    assert log.untracked == ["old"] and log.acked == ["again"]


async def test_unknown_events_are_ignored() -> None:
    acks, log = _acks()
    await acks.done("p0", 1)
    acks.drop("p0", 1)
    assert log.acked == [] and log.untracked == []
