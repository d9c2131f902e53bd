"""The Kafka consumer process (faust-streaming): a thin edge around the retry engine.

The agent takes events without auto-ack, turns each into a framework-neutral
`retry.model.Message`, and hands it to a per-key lane. The lane calls the engine's
processor, and acks only after the processor's database transaction committed. When the
shared circuit breaker is open the processor answers "blocked": the consumer then pauses
its partitions, so Kafka holds the backlog instead of the retry table, and resumes by
itself once the breaker lets calls through again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import faust
from aiokafka import TopicPartition
from faust.types import EventT, StreamT
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from retry.model import Message
from services.common.kafka import KafkaSecurity
from services.common.tracing import continue_trace
from services.reservation.acks import OrderedAcks
from services.reservation.lanes import Lanes
from services.reservation.metrics import ConsumerMetrics
from services.reservation.settings import ConsumerSettings

log = logging.getLogger(__name__)

# How often a message held by the open breaker checks whether a rebalance took it away.
_REBALANCE_CHECK_SECONDS = 0.5


class Processing(Protocol):
    """What the consumer needs from the composition root, built inside the event loop."""

    async def process(self, message: Message) -> bool:
        """Process one message; False means "blocked by the breaker, try again later"."""

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
        broker_commit_interval=1.0,
        stream_buffer_maxsize=1024,
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

    The pause is applied to the Kafka client itself, inside faust's consumer thread.
    faust's own `pause_partitions` only filters what it hands out: records the client
    had already fetched for a partition paused a moment later are dropped while the
    client's position moves past them, so after a resume those messages are never
    delivered (until a restart re-reads from the committed offset). Pausing the client
    keeps its position at the first record not handed out.
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
        timestamp=datetime.fromtimestamp(msg.timestamp, tz=UTC) if msg.timestamp else None,
        key=key,
        value=value,
        headers=headers,
        consumer_group=group,
    )


def register_agent(
    app: faust.App,
    settings: ConsumerSettings,
    runtime_factory: RuntimeFactory,
    metrics: ConsumerMetrics,
) -> None:
    topic = app.topic(settings.kafka.topic, key_type=bytes, value_type=bytes)
    group = settings.kafka.consumer_group

    async def reserve_stock(stream: StreamT[Any]) -> AsyncIterator[None]:
        # Async resources (engine, http client, breaker) live as long as the agent.
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
                # Handed back unprocessed (a rebalance is under way or happened since it
                # arrived). faust clears its own buffers, seeks back to the committed
                # offset and waits for every event still tracked: processing the lanes'
                # backlog now would hold the group's rebalance up for as long as that
                # backlog takes, past the session timeout and into the next rebalance.
                app.consumer.unacked.discard(event.message)

            acks: OrderedAcks[EventT[Any]] = OrderedAcks(manual.ack, untrack)

            def partition_of(event: EventT[Any]) -> tuple[int | None, str, int]:
                message = event.message
                return (message.generation_id, message.topic, message.partition)

            def release(event: EventT[Any]) -> None:
                acks.drop(partition_of(event), event.message.offset)
                metrics.released.inc()

            async def handle(event: EventT[Any]) -> None:
                try:
                    if not ours(event):
                        release(event)
                        return
                    message = to_message(event, group)
                    with continue_trace(message.headers.get("traceparent"), "consume order event"):
                        done = await _process_until_done(
                            runtime, gate, message, still_ours=lambda: ours(event)
                        )
                    if done:
                        await acks.done(partition_of(event), event.message.offset)
                    else:
                        release(event)
                finally:
                    metrics.in_flight.set(lanes.in_flight - 1)

            lanes: Lanes[EventT[Any]] = Lanes(settings.lanes, handle)
            lanes.start()
            watcher = asyncio.create_task(gate.watch(), name="partition-gate")

            try:
                async for event in manual.events():
                    acks.track(partition_of(event), event.message.offset, event)
                    await lanes.submit(event.message.key, event)
                    metrics.in_flight.set(lanes.in_flight)
                    yield None
            finally:
                watcher.cancel()
                await lanes.stop()

    app.agent(topic, name="reserve-stock")(reserve_stock)


async def _process_until_done(
    runtime: Processing,
    gate: PartitionGate,
    message: Message,
    *,
    still_ours: Callable[[], bool],
) -> bool:
    """Process one message, however long the breaker or the database keep it waiting.

    A failure here is infrastructure (PostgreSQL down), not the message: retrying in
    place keeps the key's order and loses nothing; Kafka keeps the rest meanwhile.
    Returns False, unprocessed, once a rebalance takes the message's partition back.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        reraise=True,
    ):
        with attempt:
            if not still_ours():
                return False
            while not await runtime.process(message):
                await gate.close_gate()
                if not await gate.wait_open(still_ours):
                    return False
        if attempt.retry_state.outcome is not None and attempt.retry_state.outcome.failed:
            exc = attempt.retry_state.outcome.exception()
            log.error(
                "processing failed, retrying in place",
                extra={
                    "event.action": "consumer_retry_in_place",
                    "error.type": type(exc).__name__,
                    "kafka.topic": message.topic,
                    "kafka.partition": message.partition,
                    "kafka.offset": message.offset,
                },
            )
    return True
