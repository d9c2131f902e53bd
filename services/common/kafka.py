"""Kafka client security settings every Kafka-facing process shares, and a start-up check.

`KafkaSecurity` is the usual set (security protocol, SASL mechanism, username, password,
CA file), read as `STEADFAST_KAFKA_SECURITY__*`, with the password a `SecretStr`. It renders
itself for librdkafka (relay, lag reader, load generator) and gives the TLS context the
consumer's faust/aiokafka client needs. `preflight` makes one metadata request with those
settings before a process starts its real clients, so a wrong password or an unreachable
cluster ends start-up with a message that says which, instead of clients that retry
quietly forever.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, model_validator
from pydantic_settings import BaseSettings

from services.common.settings import settings_config

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PREFLIGHT_TIMEOUT_SECONDS = 15.0


class KafkaUnavailable(RuntimeError):
    """The cluster could not be reached, or refused our credentials, at start-up."""


class KafkaSecurity(BaseModel):
    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None
    """PEM bundle the brokers' certificates are checked against; the system's when unset."""

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"security protocol {self.protocol} needs STEADFAST_KAFKA_SECURITY__SASL_USERNAME "
                "and STEADFAST_KAFKA_SECURITY__SASL_PASSWORD"
            )
        if self.ssl_ca_file is not None and not self.ssl_ca_file.is_file():
            raise ValueError(f"STEADFAST_KAFKA_SECURITY__SSL_CA_FILE {self.ssl_ca_file} not found")
        return self

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """confluent-kafka configuration keys for these settings."""
        config: dict[str, str] = {"security.protocol": self.protocol}
        if self.sasl:
            assert self.sasl_username is not None and self.sasl_password is not None
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.tls and self.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(self.ssl_ca_file)
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(
            cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None
        )


class KafkaClientEnv(BaseSettings):
    """The Kafka client variables alone, for tools beside the processes (the launcher, the
    load generator) that must reach the same cluster the same way."""

    model_config = settings_config()

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = KafkaSecurity()


def preflight(
    bootstrap: str,
    security: KafkaSecurity,
    *,
    timeout: float = PREFLIGHT_TIMEOUT_SECONDS,
) -> int:
    """One metadata request with the process's own settings; returns the broker count.

    librdkafka reports a refused login through its error callback and keeps retrying, so
    the callback's first authentication or TLS error ends the wait at once.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **security.librdkafka(),
        "error_cb": errors.append,
        # Its own lines would repeat the failure every few hundred ms; ours says it once.
        "log_level": 0,
    }
    admin = AdminClient(config)
    fatal = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin.poll(0.1)
        refused = [e for e in errors if e.code() in fatal]
        if refused:
            raise KafkaUnavailable(
                f"Kafka at {bootstrap} refused the connection ({_who(security)}): "
                f"{refused[0].str()}"
            )
        try:
            brokers = admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return len(brokers.brokers)
        except KafkaException as exc:
            last = exc
    detail = errors[-1].str() if errors else (str(last) if last else "no answer")
    raise KafkaUnavailable(
        f"Kafka at {bootstrap} did not answer a metadata request within {timeout:.0f}s "
        f"({security.protocol}): {detail}"
    )


def _who(security: KafkaSecurity) -> str:
    if security.sasl:
        return f"{security.protocol}, {security.sasl_mechanism} as {security.sasl_username!r}"
    return security.protocol
