"""Entry point of the console process (``steadfast-console``)."""

from __future__ import annotations

import logging

import click
import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from services.common.logs import configure_logging
from services.console.app import create_app
from services.console.settings import ConsoleSettings

log = logging.getLogger(__name__)


@click.command()
def main() -> None:
    """Run the ops console (a web page for operators)."""
    try:
        settings = ConsoleSettings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc
    configure_logging("ops-console", settings.log_level)
    assert settings.admin_token is not None  # AdminAuth guarantees one
    url = make_url(settings.database_url.get_secret_value())
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    app = create_app(
        token=settings.admin_token,
        database_conninfo=conninfo,
        api_url=settings.api_url,
        warehouse_url=settings.warehouse_url,
        prometheus_url=settings.prometheus_url,
        alertmanager_url=settings.alertmanager_url,
        refresh_seconds=settings.console_refresh_seconds,
        session_seconds=settings.console_session_hours * 3600,
        upstream_timeout_seconds=settings.console_upstream_timeout_seconds,
    )
    log.info(
        "starting ops console",
        extra={
            "event.action": "server_starting",
            "server.address": settings.host,
            "server.port": settings.console_port,
        },
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.console_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
