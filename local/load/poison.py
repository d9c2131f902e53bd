"""Poison: raw events the consumer can never decode, produced straight onto the order topic.

They bypass the API and the outbox on purpose: a real topic also receives bytes from
producers with bugs. Three shapes rotate:

- ``malformed``: not JSON at all (a truncated object);
- ``wrong_schema``: valid JSON that is not an event of any known version;
- ``oversized``: an OrderPlaced padded past the API's body limit, with a field the
  schema forbids, i.e. something no API request could have produced.

Each carries the key ``load-poison-<run id>-<index>``, so the dead-lettered rows can be
found again in the retry table by key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Producer

from local.load import TargetError

SHAPES = ("malformed", "wrong_schema", "oversized")
DEFAULT_OVERSIZED_BYTES = 300 * 1024


def key_prefix(run_id: str) -> str:
    return f"load-poison-{run_id}-"


def payload(shape: str, index: int, oversized_bytes: int = DEFAULT_OVERSIZED_BYTES) -> bytes:
    if shape == "malformed":
        return b'{"event_type": "OrderPlaced", "order_id": '
    if shape == "wrong_schema":
        return json.dumps(
            {"event_type": "OrderPlaced", "schema_version": 99, "order": index}
        ).encode()
    if shape == "oversized":
        event = {
            "event_type": "OrderPlaced",
            "schema_version": 1,
            "order_id": str(uuid.uuid4()),
            "customer_id": "load-poison",
            "items": [{"sku": "LOAD-0", "quantity": 1}],
            "placed_at": datetime.now(UTC).isoformat(),
            "padding": "",
        }
        base = len(json.dumps(event).encode())
        event["padding"] = "x" * max(0, oversized_bytes - base)
        return json.dumps(event).encode()
    raise ValueError(f"unknown poison shape {shape!r}")


class PoisonProducer:
    """Produces asynchronously; `close` flushes and reports what the broker refused."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        run_id: str,
        *,
        oversized_bytes: int = DEFAULT_OVERSIZED_BYTES,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self._topic = topic
        self._prefix = key_prefix(run_id)
        self._run_id = run_id
        self._oversized = oversized_bytes
        self.sent = 0
        self.acked = 0
        self.errors: list[str] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                # Room for the oversized shape; the broker's own limit still applies.
                "message.max.bytes": max(1_048_576, oversized_bytes * 2),
                "linger.ms": 5,
                **(client_config or {}),
            }
        )

    def send(self, index: int) -> None:
        shape = SHAPES[self.sent % len(SHAPES)]
        self._producer.produce(
            self._topic,
            key=f"{self._prefix}{index}".encode(),
            value=payload(shape, index, self._oversized),
            headers={
                "event_type": "OrderPlaced",
                "schema_version": "1",
                "content_type": "application/json",
                "x-steadfast-load": f"{self._run_id}:{shape}",
            },
            on_delivery=self._delivered,
        )
        self.sent += 1
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors.append(str(err))

    def close(self, timeout: float = 15.0) -> None:
        """Wait for every delivery report; raise when the broker did not take them all."""
        left = self._producer.flush(timeout)
        if left or self.errors:
            raise TargetError(
                f"poison: {self.acked}/{self.sent} delivered, {left} still queued"
                + (f"; first error: {self.errors[0]}" if self.errors else "")
            )
