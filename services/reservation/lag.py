"""Consumer lag per partition, read through the Kafka admin API (confluent-kafka).

Lag = high watermark minus the group's committed offset. It is measured from outside the
consumer's own client so it stays true when the consumer is paused or stuck.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.reservation.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


class LagMonitor:
    """Lag per partition, read with a plain confluent-kafka `Consumer` of the same group.

    The consumer never subscribes, so it never joins the group: `committed()` and the
    watermark query only read. Not the AdminClient's `list_consumer_group_offsets`: in
    librdkafka an admin client's offset fetch that meets NOT_COORDINATOR (the group
    coordinator moving during a broker restart) dereferences a missing consumer group
    and crashes the process (SIGSEGV, seen in the rolling-restart chaos scenario;
    confluent-kafka-javascript#374 has the same stack).
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        metrics: ConsumerMetrics,
        *,
        client_config: Mapping[str, str] | None = None,
        interval_seconds: float = 5.0,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._config: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "client.id": f"{group}-lag-reader",
            "log_level": 3,
            **(client_config or {}),
        }
        self._client: Consumer | None = None
        self._group = group
        self._topic = topic
        self._metrics = metrics
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def measure(self) -> dict[int, int]:
        """Lag per partition of the topic; a partition with no commit counts from 0."""
        if self._client is None:
            self._client = Consumer(self._config)
        client = self._client
        meta = client.list_topics(self._topic, timeout=self._timeout).topics[self._topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        partitions = [TopicPartition(self._topic, p) for p in sorted(meta.partitions)]
        committed = {
            tp.partition: max(tp.offset, 0)
            for tp in client.committed(partitions, timeout=self._timeout)
        }
        lags = {}
        for tp in partitions:
            _, high = client.get_watermark_offsets(tp, timeout=self._timeout, cached=False)
            lags[tp.partition] = max(0, high - committed.get(tp.partition, 0))
        return lags

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    lags = self.measure()
                except (KafkaException, KeyError, TimeoutError) as exc:
                    log.debug(
                        "lag not measured: %s", exc, extra={"event.action": "lag_unavailable"}
                    )
                    continue
                for partition, lag in lags.items():
                    self._metrics.lag.labels(self._topic, str(partition)).set(lag)
        finally:
            self.close()
