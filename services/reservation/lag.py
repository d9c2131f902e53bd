"""Consumer lag per partition, read through the Kafka admin API (confluent-kafka).

Lag = high watermark minus the group's committed offset. It is measured from outside the
consumer's own client so it stays true when the consumer is paused or stuck.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from services.reservation.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


class LagMonitor:
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
        self._admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
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

    def measure(self) -> dict[int, int]:
        """Lag per partition of the topic; a partition with no commit counts from 0."""
        meta = self._admin.list_topics(self._topic, timeout=self._timeout).topics[self._topic]
        partitions = [TopicPartition(self._topic, p) for p in sorted(meta.partitions)]
        request = [ConsumerGroupTopicPartitions(self._group, partitions)]
        committed_future = self._admin.list_consumer_group_offsets(
            request, request_timeout=self._timeout
        )[self._group]
        committed = {
            tp.partition: max(tp.offset, 0)
            for tp in committed_future.result(self._timeout).topic_partitions
        }
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = self._admin.list_offsets(
            {tp: latest for tp in partitions}, request_timeout=self._timeout
        )
        return {
            tp.partition: max(
                0, future.result(self._timeout).offset - committed.get(tp.partition, 0)
            )
            for tp, future in ends.items()
        }

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                lags = self.measure()
            except (KafkaException, KeyError, TimeoutError) as exc:
                log.debug("lag not measured: %s", exc, extra={"event.action": "lag_unavailable"})
                continue
            for partition, lag in lags.items():
                self._metrics.lag.labels(self._topic, str(partition)).set(lag)
