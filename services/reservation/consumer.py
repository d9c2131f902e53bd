"""The Kafka consumer process (faust-streaming): a thin edge around the batch engine.

The agent takes events without auto-ack and queues them (bounded: a full queue holds the
agent, and so the fetch). One worker drains the queue a batch at a time: whatever has
arrived, up to `batch_max_messages`, goes to `retry.batch.BatchProcessor` in one call
(one read, the warehouse calls, one write), then is acked in offset order per partition
(`services.reservation.acks`). While the engine works on a batch, the next one gathers in
the queue, so batches grow with the load by themselves and stay small (low latency) when
it is light.

A record that cannot even be turned into a message is parked as poison, with a metric
and a log line, and its partition moves on. When the shared circuit breaker is open the
engine answers "blocked" for the calls it refused: the consumer then pauses its
partitions (Kafka holds the backlog, not the retry table), waits, and offers those events
again once the breaker lets calls through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import faust
from aiokafka import TopicPartition
from faust.types import EventT, StreamT
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from retry.batch_model import Delivery, Outcome, Verdict
from retry.errors import UndecodableMessage
from retry.model import Message
from services.common.kafka import KafkaSecurity
from services.reservation.acks import OrderedAcks
from services.reservation.metrics import ConsumerMetrics
from services.reservation.settings import ConsumerSettings

log = logging.getLogger(__name__)

# How often events held by the open breaker check whether a rebalance took them away.
_REBALANCE_CHECK_SECONDS = 0.5


class Processing(Protocol):
    """What the consumer needs from the composition root, built inside the event loop."""

    async def process(self, deliveries: Sequence[Delivery]) -> list[Outcome]: ...

    async def breaker_state(self) -> str: ...


RuntimeFactory = Callable[[], AbstractAsyncContextManager[Processing]]


def build_app(settings: ConsumerSettings) -> faust.App:
    kafka = settings.kafka
    datadir = settings.data_dir / kafka.consumer_group
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    brokers = [f"kafka://{hostport}" for hostport in settings.kafka_bootstrap_servers.split(",")]
    return faust.App(
        kafka.consumer_group,
        broker=brokers,
        broker_credentials=_credentials(settings.kafka_security),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout_seconds,
        broker_heartbeat_interval=min(1.0, kafka.session_timeout_seconds / 3),
        broker_max_poll_interval=kafka.max_poll_interval_seconds,
        broker_max_poll_records=kafka.max_poll_records,
        consumer_metadata_max_age_ms=int(kafka.metadata_max_age_seconds * 1000),
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(1024, 2 * settings.batch_max_messages),
        # At a rebalance faust would otherwise wait for every event it handed out to be
        # acked; events queued here are handed back instead (untracked) and redelivered.
        stream_wait_empty=False,
    )


def _credentials(security: KafkaSecurity) -> faust.types.auth.CredentialsT | None:
    """faust's form of the shared client security settings (None for PLAINTEXT)."""
    if security.sasl:
        assert security.sasl_username is not None and security.sasl_password is not None
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password.get_secret_value(),
            mechanism=security.sasl_mechanism,
            ssl_context=security.ssl_context(),
        )
    if security.tls:
        return faust.SSLCredentials(security.ssl_context())
    return None


class PartitionGate:
    """Pauses the topic's partitions while the breaker refuses calls.

    Paused partitions stay assigned and the client keeps polling (empty) and
    heartbeating, so group membership stays healthy: no rebalance storm, no eviction.

    The one place that reaches inside faust (its consumer thread and the aiokafka client
    it owns): faust's own `pause_partitions` only filters what it hands out, so records
    the client had already fetched for a partition paused a moment later are dropped
    while the client's position moves past them, and after a resume those messages are
    never delivered (until a restart re-reads from the committed offset). Pausing the
    client itself keeps its position at the first record not handed out.
    """

    def __init__(
        self,
        app: faust.App,
        topic: str,
        breaker_state: Callable[[], Awaitable[str]],
        metrics: ConsumerMetrics,
        poll_seconds: float,
    ) -> None:
        self._app = app
        self._topic = topic
        self._breaker_state = breaker_state
        self._metrics = metrics
        self._poll = poll_seconds
        self._paused = False
        self._closed = asyncio.Event()
        self._closed.set()
        self._lock = asyncio.Lock()

    def _partitions(self) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition)
            for tp in self._app.consumer.assignment()
            if tp.topic == self._topic
        ]

    async def _client(self, pause: bool) -> None:
        thread: Any = cast(Any, self._app.consumer)._thread
        partitions = self._partitions()

        async def apply() -> None:
            client = thread._ensure_consumer()
            # Only what is still assigned: a rebalance may have moved partitions away.
            assigned = set(client.assignment())
            wanted = [tp for tp in partitions if tp in assigned]
            (client.pause if pause else client.resume)(*wanted)

        await thread.call_thread(apply)

    async def close_gate(self) -> None:
        async with self._lock:
            if not self._paused:
                self._paused = True
                self._closed.clear()
                self._metrics.paused.set(1)
                log.warning(
                    "breaker open: pausing partitions",
                    extra={"event.action": "consumer_paused", "kafka.topic": self._topic},
                )
            # Re-applied on every call: a rebalance hands out partitions unpaused.
            await self._client(pause=True)

    async def wait_open(self, still_wanted: Callable[[], bool]) -> bool:
        """Wait for the gate to reopen; False as soon as `still_wanted()` turns False."""
        while still_wanted():
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=_REBALANCE_CHECK_SECONDS)
            except TimeoutError:
                continue
            return True
        return False

    async def watch(self) -> None:
        """Reopen the gate once the breaker is no longer OPEN (HALF_OPEN lets probes in).

        State and client calls change together under one lock: a pause applied in the
        consumer thread after a concurrent resume would leave the client paused while
        the gate believes it open, and nothing would ever resume it.
        """
        while True:
            await asyncio.sleep(self._poll)
            try:
                if not self._paused:
                    continue
                if await self._breaker_state() == "OPEN":
                    await self.close_gate()
                    continue
                async with self._lock:
                    await self._client(pause=False)
                    self._paused = False
                    self._metrics.paused.set(0)
                    self._closed.set()
            except Exception:
                # The watcher is the only way back to consuming: it must outlive a blip.
                log.exception("partition gate check failed", extra={"event.action": "gate_error"})
                continue
            log.info(
                "breaker allows calls: resuming partitions",
                extra={"event.action": "consumer_resumed", "kafka.topic": self._topic},
            )


def to_message(event: EventT[Any], group: str) -> Message:
    msg = event.message
    headers: dict[str, str] = {}
    raw: Any = msg.headers or []
    pairs: list[tuple[str, Any]] = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
    for name, value in pairs:
        # A header that is not UTF-8 is kept visibly rather than dropped.
        text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
        headers[str(name)] = str(text)
    key = msg.key.decode("utf-8", errors="replace") if isinstance(msg.key, bytes) else msg.key
    value = msg.value if isinstance(msg.value, bytes) else (msg.value or b"")
    return Message(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp=_timestamp(msg.timestamp),
        key=key,
        value=value,
        headers=headers,
        consumer_group=group,
    )


def _timestamp(seconds: float | None) -> datetime | None:
    # A producer sets CreateTime freely; one Python cannot represent is simply unknown.
    if not seconds:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def fallback_message(event: EventT[Any], group: str) -> Message:
    """What can be kept of a record `to_message` could not read: its place and bytes."""
    msg = event.message
    value = msg.value if isinstance(msg.value, bytes) else b""
    return Message(
        topic=str(msg.topic),
        partition=msg.partition,
        offset=msg.offset,
        value=value,
        consumer_group=group,
    )


# A batch whose handling raised outside the engine (a bug in this module) is tried this
# many times in place before its events are parked for the re-drive instead.
_BATCH_TRIES = 3


Partition = tuple[int | None, str, int]


class BatchWorker:
    """Drains the agent's queue a batch at a time; acks what the engine finished.

    Framework-light on purpose: it sees faust events only through `ours`, `partition_of`
    and the ack callbacks, so a test drives it with plain objects and a real engine.
    """

    def __init__(
        self,
        runtime: Processing,
        acks: OrderedAcks[Any],
        *,
        convert: Callable[[Any], Message],
        fallback: Callable[[Any], Message],
        ours: Callable[[Any], bool],
        partition_of: Callable[[Any], Partition],
        offset_of: Callable[[Any], int],
        gate: PartitionGate | None,
        metrics: ConsumerMetrics,
        batch_max: int,
        linger_seconds: float = 0.0,
    ) -> None:
        self._runtime = runtime
        self._acks = acks
        self._convert = convert
        self._fallback = fallback
        self._ours = ours
        self._partition_of = partition_of
        self._offset_of = offset_of
        self._gate = gate
        self._metrics = metrics
        self._batch_max = batch_max
        self._linger = linger_seconds
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * batch_max)

    async def put(self, event: Any) -> None:
        self._acks.track(self._partition_of(event), self._offset_of(event), event)
        await self.queue.put(event)
        self._metrics.in_flight.set(self._acks.pending())

    async def run(self) -> None:
        """Forever: take a batch, process it, ack it. Never ends on an error."""
        while True:
            batch = [await self.queue.get()]
            if self._linger and self.queue.qsize() < self._batch_max - 1:
                # Every batch costs one read, one write, one warehouse call and one commit
                # whatever its size: a short wait for company keeps batches large when
                # the events are split across many instances (producers' linger.ms).
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_max and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._metrics.batch_size.observe(len(batch))
            await self._handle_whatever_happens(batch)
            self._metrics.in_flight.set(self._acks.pending())

    async def _handle_whatever_happens(self, batch: list[Any]) -> None:
        """`handle`, and if it raises (a bug: the engine raises only what it retries
        itself), try again; then park the batch for the re-drive, which runs the handler
        without this loop. Handing it back would not help: without a rebalance Kafka does
        not redeliver, and the partition's commits would stop behind it."""
        failure: Exception | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.handle(batch, failed_with=failure if attempt > _BATCH_TRIES else None)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception(
                    "batch failed",
                    extra={
                        "event.action": "consumer_batch_failed",
                        "retry.attempt": attempt,
                        "retry.batch": len(batch),
                    },
                )
                self._metrics.batch_failures.inc()
                failure = failure if attempt > _BATCH_TRIES else exc
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    async def handle(self, events: Sequence[Any], *, failed_with: Exception | None = None) -> None:
        """Process `events` and ack them; with `failed_with`, park them all as failed so."""
        pending: list[tuple[Any, Delivery]] = []
        for event in events:
            if not self._ours(event):
                self._release(event)
                continue
            if failed_with is not None:
                pending.append((event, Delivery(message=self._fallback(event), broken=failed_with)))
                continue
            try:
                delivery = Delivery(message=self._convert(event))
            except Exception as exc:
                log.error(
                    "unreadable record parked as poison",
                    exc_info=True,
                    extra={
                        "event.action": "consumer_record_unreadable",
                        "error.type": type(exc).__name__,
                        "kafka.partition": self._partition_of(event)[2],
                        "kafka.offset": self._offset_of(event),
                    },
                )
                self._metrics.unreadable.inc()
                delivery = Delivery(
                    message=self._fallback(event),
                    broken=UndecodableMessage(
                        f"the record could not be read: {type(exc).__name__}: {exc}"
                    ),
                )
            pending.append((event, delivery))
        while pending:
            outcomes = await self._process_in_place([d for _, d in pending])
            if outcomes is None:  # every event went to another member
                for event, _ in pending:
                    self._release(event)
                return
            waiting: list[tuple[Any, Delivery]] = []
            for (event, delivery), outcome in zip(pending, outcomes, strict=True):
                if outcome.verdict is Verdict.BLOCKED:
                    waiting.append((event, delivery))
                else:
                    await self._acks.done(self._partition_of(event), self._offset_of(event))
            pending = await self._wait_for_breaker(waiting) if waiting else []

    async def _process_in_place(self, deliveries: list[Delivery]) -> list[Outcome] | None:
        """The engine on a batch, however long the database keeps it waiting.

        A failure here is infrastructure (PostgreSQL down), not the messages: retrying in
        place keeps every key's order and loses nothing; Kafka keeps the rest meanwhile.
        """
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(initial=0.2, max=5.0),
            reraise=True,
        ):
            with attempt:
                return await self._runtime.process(deliveries)
            outcome = attempt.retry_state.outcome
            if outcome is not None and outcome.failed:
                exc = outcome.exception()
                log.error(
                    "processing failed, retrying in place",
                    extra={
                        "event.action": "consumer_retry_in_place",
                        "error.type": type(exc).__name__,
                        "error.message": str(exc)[:500],
                        "retry.batch": len(deliveries),
                    },
                )
        return None  # pragma: no cover (AsyncRetrying with reraise never ends here)

    async def _wait_for_breaker(
        self, waiting: list[tuple[Any, Delivery]]
    ) -> list[tuple[Any, Delivery]]:
        """Pause, wait for the breaker; the events still ours, to offer again."""

        def still_ours() -> list[tuple[Any, Delivery]]:
            return [(e, d) for e, d in waiting if self._ours(e)]

        if self._gate is not None:
            await self._gate.close_gate()
            await self._gate.wait_open(lambda: bool(still_ours()))
        else:
            await asyncio.sleep(_REBALANCE_CHECK_SECONDS)
        kept = still_ours()
        for event, _ in waiting:
            if not self._ours(event):
                self._release(event)
        return kept

    def _release(self, event: Any) -> None:
        self._acks.drop(self._partition_of(event), self._offset_of(event))
        self._metrics.released.inc()


def register_agent(
    app: faust.App,
    settings: ConsumerSettings,
    runtime_factory: RuntimeFactory,
    metrics: ConsumerMetrics,
) -> None:
    topic = app.topic(settings.kafka.topic, key_type=bytes, value_type=bytes)
    group = settings.kafka.consumer_group

    async def reserve_stock(stream: StreamT[Any]) -> AsyncIterator[None]:
        # Async resources (pool, http client, breaker) live as long as the agent.
        async with runtime_factory() as runtime:
            gate = PartitionGate(
                app,
                settings.kafka.topic,
                runtime.breaker_state,
                metrics,
                settings.breaker.sync_interval_seconds,
            )
            manual = cast(faust.Stream[Any], stream).noack()

            def ours(event: EventT[Any]) -> bool:
                """Is this event still ours to process (no rebalance since it arrived)?"""
                return (
                    app.flow_control.is_active()
                    and event.message.generation_id == app.consumer_generation_id
                )

            def untrack(event: EventT[Any]) -> None:
                # Handed back unprocessed: faust seeks back to the committed offset after
                # the rebalance, and must not wait for this event to be acked.
                app.consumer.unacked.discard(event.message)

            def partition_of(event: EventT[Any]) -> Partition:
                message = event.message
                return (message.generation_id, message.topic, message.partition)

            worker = BatchWorker(
                runtime,
                OrderedAcks(manual.ack, untrack),
                convert=lambda event: to_message(event, group),
                fallback=lambda event: fallback_message(event, group),
                ours=ours,
                partition_of=partition_of,
                offset_of=lambda event: int(event.message.offset),
                gate=gate,
                metrics=metrics,
                batch_max=settings.batch_max_messages,
                linger_seconds=settings.batch_linger_seconds,
            )
            tasks = [
                asyncio.create_task(worker.run(), name="batch-worker"),
                asyncio.create_task(gate.watch(), name="partition-gate"),
            ]
            try:
                async for event in manual.events():
                    await worker.put(event)
                    yield None
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    app.agent(topic, name="reserve-stock")(reserve_stock)
