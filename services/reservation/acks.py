"""Acks to the consumer framework in offset order per partition, whatever order lanes finish in.

Per-key lanes finish a partition's events out of order. faust commits the first run of
consecutive acked offsets and checks the head only loosely (one offset past its committed
offset passes), so an early ack of offset n+1 while n is still in a lane can commit past n:
a crash then, or an n handed back at a rebalance, would lose it. Here an event is acked
only once every earlier event of its partition (same generation) is acked too.

An event handed back unprocessed (`drop`) is never acked, and neither is anything after it
in its partition and generation: those are untracked instead, so the commit stays below
the dropped one and faust's seek to the committed offset redelivers them all (processed
ones become no-ops through the processed-events table).

Written here rather than taken from a library: this ordering is the consumer pattern's
own contract with faust's commit logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

E = TypeVar("E")

_OPEN, _DONE = "open", "done"


@dataclass
class _Partition(Generic[E]):
    # Offset -> [event, state], in arrival order (faust delivers a partition in order).
    entries: dict[int, list[object]] = field(default_factory=dict)
    dropped_from: int | None = None


class OrderedAcks(Generic[E]):
    def __init__(self, ack: Callable[[E], Awaitable[object]], untrack: Callable[[E], None]) -> None:
        self._ack = ack
        self._untrack = untrack
        self._partitions: dict[Hashable, _Partition[E]] = {}

    def track(self, partition: Hashable, offset: int, event: E) -> None:
        """Register an event as it is handed to a lane (call in delivery order)."""
        self._partitions.setdefault(partition, _Partition()).entries[offset] = [event, _OPEN]

    async def done(self, partition: Hashable, offset: int) -> None:
        """The event's work is committed: ack it, and what it held back, when in order."""
        state = self._partitions.get(partition)
        if state is None or offset not in state.entries:
            return
        if state.dropped_from is not None and offset >= state.dropped_from:
            self._forget(state, offset)
        else:
            state.entries[offset][1] = _DONE
            await self._flush(state)
        self._cleanup(partition, state)

    def drop(self, partition: Hashable, offset: int) -> None:
        """Hand the event back unprocessed: it and everything after it stay unacked."""
        state = self._partitions.get(partition)
        if state is None or offset not in state.entries:
            return
        if state.dropped_from is None or offset < state.dropped_from:
            state.dropped_from = offset
        for later in [o for o, (_, st) in state.entries.items() if o >= offset and st == _DONE]:
            self._forget(state, later)
        self._forget(state, offset)
        self._cleanup(partition, state)

    def pending(self) -> int:
        """Events tracked and not yet acked or untracked."""
        return sum(len(state.entries) for state in self._partitions.values())

    async def _flush(self, state: _Partition[E]) -> None:
        while state.entries:
            offset = next(iter(state.entries))
            event, status = state.entries[offset]
            if status != _DONE:
                return
            del state.entries[offset]
            await self._ack(event)  # type: ignore[arg-type]

    def _forget(self, state: _Partition[E], offset: int) -> None:
        event, _ = state.entries.pop(offset)
        self._untrack(event)  # type: ignore[arg-type]

    def _cleanup(self, partition: Hashable, state: _Partition[E]) -> None:
        # A dropped partition keeps its mark for the rest of its generation (a few bytes
        # per rebalance): a late event of it must not be acked past the dropped one.
        # `is state`: an ack awaited in between may have let a new state take this key.
        if (
            not state.entries
            and state.dropped_from is None
            and self._partitions.get(partition) is state
        ):
            del self._partitions[partition]
