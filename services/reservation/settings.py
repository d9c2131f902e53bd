"""Settings for the reservation service's processes: one class per process.

Every class reads `STEADFAST_*` variables (nested models use `__`, e.g.
`STEADFAST_BREAKER__FAILURE_RATE_THRESHOLD=0.5`). Build one at the entry point and pass
it down; tests construct them with keyword arguments.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings

from services.common.kafka import KafkaSecurity
from services.common.settings import AdminAuth, settings_config

ORDER_EVENTS_TOPIC = "reservations.order-events"


class KafkaConfig(BaseModel):
    topic: str = ORDER_EVENTS_TOPIC
    partitions: int = Field(default=6, ge=1)
    consumer_group: str = "steadfast-reservations"
    # Kafka's smallest allowed (group.min.session.timeout.ms): a consumer killed with -9
    # hands its partitions to the others this long after its last heartbeat.
    session_timeout_seconds: float = Field(default=6.0, gt=0)
    # A consumer whose loop is stuck (not a paused one: paused partitions still poll)
    # gives its partitions back after this; Kafka's 300 s default would hold them longer.
    max_poll_interval_seconds: float = Field(default=60.0, gt=0)
    # faust hands a whole fetch to the agent before it fetches again, and the Kafka client
    # leaves the group when no fetch happened for max_poll_interval: a large backlog
    # fetched in one piece (thousands of records, drained at the processing rate) would
    # outlast it. A bounded batch keeps fetches, and so group membership, regular.
    max_poll_records: int = Field(default=500, ge=1)
    # The group leader rebalances when a subscribed topic's partitions change, but it only
    # learns of a change at a metadata refresh. Right after a broker restart a topic whose
    # leaders are not elected yet looks missing, the assignment leaves it out, and with
    # the client's 300 s default the consumer would sit unassigned for five minutes.
    metadata_max_age_seconds: float = Field(default=10.0, gt=0)


class WarehouseClientConfig(BaseModel):
    base_url: str = "http://127.0.0.1:8081"
    connect_timeout_seconds: float = Field(default=1.0, gt=0)
    read_timeout_seconds: float = Field(default=2.0, gt=0)
    max_connections: int = Field(default=100, ge=1)


class BreakerConfig(BaseModel):
    name: str = "warehouse"
    window_seconds: float = Field(default=10.0, gt=0)
    min_calls: int = Field(default=20, ge=1)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    open_seconds: float = Field(default=5.0, gt=0)
    half_open_permits: int = Field(default=3, ge=1)
    sync_interval_seconds: float = Field(default=0.2, gt=0)


class RetryConfig(BaseModel):
    """The default policy is logarithmic; `by_error_class` gives a class its own, e.g.
    `{"http_429": {"kind": "fixed", "delay": 5, "max_attempts": 20}}`. `classification`
    overrides entries of the classifier's table, e.g. `{"http_404": "retryable"}`.
    """

    policy: str = "logarithmic"
    base_delay_seconds: float = Field(default=1.0, gt=0)
    max_delay_seconds: float = Field(default=60.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, lt=1)
    max_attempts: int = Field(default=8, ge=1)
    unexpected_max_attempts: int = Field(default=3, ge=1)
    by_error_class: dict[str, dict[str, Any]] = Field(default_factory=dict)
    classification: dict[str, str] = Field(default_factory=dict)


class _Common(BaseSettings):
    model_config = settings_config()

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/steadfast")
    log_level: str = "INFO"
    host: str = Field(default="127.0.0.1", description="address to serve HTTP/metrics on")
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    db_pool_size: int = Field(default=10, ge=1)


class ApiSettings(AdminAuth, _Common):
    port: int = Field(default=8000, ge=0, le=65535)
    reuse_port: bool = Field(
        default=False,
        description="bind with SO_REUSEPORT: replicas on one host share the port, the kernel "
        "spreads connections (each replica then serves /metrics on metrics_port too)",
    )
    kafka: KafkaConfig = KafkaConfig()
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    breaker: BreakerConfig = BreakerConfig()


class RelaySettings(_Common):
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = KafkaSecurity()
    batch_size: int = Field(default=500, ge=1, description="rows per claim without a backlog")
    max_batch_size: int = Field(
        default=4000, ge=1, description="rows per claim the batch grows to under a backlog"
    )
    lease_seconds: float = Field(default=30.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    retention_hours: float = Field(default=24.0, gt=0)
    producer_stats_interval_seconds: float = Field(
        default=15.0, gt=0, description="librdkafka statistics (producer gauges) period"
    )
    instance_id: str | None = None


class ConsumerSettings(_Common):
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = KafkaSecurity()
    kafka: KafkaConfig = KafkaConfig()
    warehouse: WarehouseClientConfig = WarehouseClientConfig()
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    batch_max_messages: int = Field(
        default=500, ge=1, description="most messages handed to the engine at once"
    )
    batch_linger_seconds: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="wait this long after a batch's first message for more (fewer, larger "
        "batches at the cost of this much latency)",
    )
    instance_id: str | None = None
    # faust keeps local state here; only in-memory tables are used, but it makes the dir.
    data_dir: Path = Path(tempfile.gettempdir()) / "steadfast-consumer"


class SchedulerSettings(_Common):
    warehouse: WarehouseClientConfig = WarehouseClientConfig()
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    interval_seconds: float = Field(default=1.0, gt=0)
    cron: str | None = None
    batch_size: int = Field(default=100, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    redrive_rate_per_second: float = Field(
        default=50.0, gt=0, description="re-drives per second, for all schedulers together"
    )
    redrive_burst: int = Field(default=50, ge=1)
    processed_retention_hours: float = Field(
        default=168.0, gt=0, description="how long an event id is remembered for dedup"
    )
    instance_id: str | None = None
