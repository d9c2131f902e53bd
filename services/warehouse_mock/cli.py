"""Entry point of the warehouse mock process (``steadfast-warehouse``)."""

from __future__ import annotations

import logging
from typing import Any

import click
import uvicorn
from pydantic import ValidationError

from services.common.logs import configure_logging
from services.warehouse_mock.app import create_app
from services.warehouse_mock.settings import WarehouseMockSettings

logger = logging.getLogger(__name__)


@click.command()
@click.option("--host", default=None, help="Bind address (default: STEADFAST_HOST or 127.0.0.1)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port, 0 for any free one (default: STEADFAST_WAREHOUSE_PORT or 8081)",
)
def main(host: str | None, port: int | None) -> None:
    """Run the warehouse mock HTTP server."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["warehouse_port"] = port
    try:
        settings = WarehouseMockSettings(**overrides)
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc
    configure_logging("warehouse-mock", settings.log_level)
    logger.info(
        "starting warehouse mock",
        extra={
            "event.action": "server_starting",
            "server.address": settings.host,
            "server.port": settings.warehouse_port,
        },
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.warehouse_port,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,
        timeout_graceful_shutdown=settings.warehouse_shutdown_grace_seconds,
    )
