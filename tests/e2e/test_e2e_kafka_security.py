"""A secured cluster: the launcher's Apache Kafka with a SASL/SCRAM listener over TLS.

Every Kafka client of the pipeline (relay, consumer and its lag reader) connects with the
`STEADFAST_KAFKA_SECURITY__*` settings the launcher hands down, and orders are reserved
through it. A wrong password ends a process's start-up within seconds, with a message that
names the refusal, instead of a client that retries quietly forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e.test_e2e_orders import _place, _wait_all_final

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.slow]

ORDERS = 30
BIN = Path(sys.executable).parent


def test_orders_are_reserved_through_a_sasl_ssl_listener_and_a_wrong_password_fails_fast(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(broker="launcher", args=["--kafka-security", "sasl-ssl"])
    client = stack.endpoints["kafka_client_config"]
    assert client["security.protocol"] == "SASL_SSL"
    assert client["sasl.mechanism"] == "SCRAM-SHA-512"
    assert Path(client["ssl.ca.location"]).is_file()
    # The client address is the secured listener, not the internal PLAINTEXT one.
    assert (
        stack.endpoints["kafka_bootstrap_servers"]
        != stack.endpoints["kafka_internal_bootstrap_servers"]
    )

    ids = _place(stack, ORDERS)
    assert len(set(ids)) == ORDERS
    _wait_all_final(stack, {"RESERVED": ORDERS}, timeout=90)
    stats = stack.get("warehouse", "/admin/stats").json()
    assert stats["reservations"] == ORDERS

    # A plaintext client on the secured listener is not served (the listener is real).
    from confluent_kafka.admin import AdminClient

    plain = AdminClient(
        {"bootstrap.servers": stack.endpoints["kafka_bootstrap_servers"], "log_level": 0}
    )
    with pytest.raises(Exception, match=r"(?i)transport|timed out|failed"):
        plain.list_topics(timeout=3)

    for script in ("steadfast-relay", "steadfast-consumer"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEADFAST_")}
        env.update(
            {
                "STEADFAST_DATABASE_URL": stack.database_url,
                "STEADFAST_KAFKA_BOOTSTRAP_SERVERS": stack.endpoints["kafka_bootstrap_servers"],
                "STEADFAST_KAFKA_SECURITY__PROTOCOL": "SASL_SSL",
                "STEADFAST_KAFKA_SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
                "STEADFAST_KAFKA_SECURITY__SASL_USERNAME": client["sasl.username"],
                "STEADFAST_KAFKA_SECURITY__SASL_PASSWORD": "not-the-password",
                "STEADFAST_KAFKA_SECURITY__SSL_CA_FILE": client["ssl.ca.location"],
                "STEADFAST_DATA_DIR": str(stack.state_dir / f"wrong-{script}"),
            }
        )
        started = time.monotonic()
        result = subprocess.run(
            [str(BIN / script)], env=env, capture_output=True, text=True, timeout=60
        )
        took = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{script} started with a wrong password:\n{output}"
        assert took < 30, f"{script} took {took:.0f}s to give up"
        assert "refused the connection" in output, output
        assert "invalid credentials" in output, output
        assert "not-the-password" not in output  # the secret is never echoed

    # The stack itself is unharmed.
    assert stack.get("api", "/health").status_code == httpx.codes.OK
