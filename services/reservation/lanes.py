"""Per-key lanes: concurrency across keys, strict order within a key.

Messages are hashed by key onto N lanes. Each lane handles its messages one at a time,
in arrival order, so two events of one order are never processed out of order, while a
slow warehouse call for one order does not stall the others on its partition. Kafka
offsets are acked after the database write and in offset order per partition
(`services.reservation.acks`), so a commit never passes a message still in a lane.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Lanes(Generic[T]):
    def __init__(
        self,
        count: int,
        work: Callable[[T], Awaitable[None]],
        *,
        depth: int = 16,
    ) -> None:
        self._work = work
        self._queues: list[asyncio.Queue[T]] = [asyncio.Queue(maxsize=depth) for _ in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self.in_flight = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(queue), name=f"lane-{i}")
            for i, queue in enumerate(self._queues)
        ]

    async def submit(self, key: bytes | None, item: T) -> None:
        """Queue `item` on its key's lane; waits when that lane is full (backpressure)."""
        # crc32, not hash(): the lane of a key must not change between runs.
        lane = zlib.crc32(key or b"") % len(self._queues)
        self.in_flight += 1
        await self._queues[lane].put(item)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, queue: asyncio.Queue[T]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._work(item)
            finally:
                self.in_flight -= 1
                queue.task_done()
